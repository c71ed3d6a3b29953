-- report/ranking: the highest rates of the week for both metrics, in two groups per metric:
-- cells with enough prompts to rank (well_measured: n_prompts >= min_prompts()) and the others,
-- listed apart so a cell of two prompts is never ranked above a measured one. Within a
-- group: the rate, then the lower bound of its interval (the better-evidenced first).
-- $limit rows per metric and group; a cell with no non-answer (or no refusal) is not listed.
WITH metrics AS (
    SELECT 'non_answer' AS metric, *, non_answer_rate AS rate, non_answer_ci_low AS rate_low,
           non_answer_ci_high AS rate_high, corrected_non_answer_rate AS corrected,
           corrected_non_answer_ci_low AS corrected_low, corrected_non_answer_ci_high AS corrected_high
    FROM refusal_rates WHERE week = $week
    UNION ALL BY NAME
    SELECT 'refusal' AS metric, *, refusal_rate AS rate, ci_low AS rate_low, ci_high AS rate_high,
           corrected_refusal_rate AS corrected, corrected_refusal_ci_low AS corrected_low,
           corrected_refusal_ci_high AS corrected_high
    FROM refusal_rates WHERE week = $week
),
ranked AS (
    SELECT *, coalesce(well_measured, false) AS ranked,
           row_number() OVER (PARTITION BY metric, coalesce(well_measured, false)
                              ORDER BY rate DESC, rate_low DESC, study, model, deployment, topic, language) AS pos,
           count(*) OVER (PARTITION BY metric, coalesce(well_measured, false)) AS n_group
    FROM metrics
    WHERE rate > 0
)
SELECT metric, ranked, pos, n_group, study, model, deployment, topic, language, n_prompts, n_samples,
       rate, rate_low, rate_high, corrected, corrected_low, corrected_high,
       refusal_rate, evasive_rate, blocked_rate, truncated_rate, non_answer_rate
FROM ranked
WHERE pos <= $limit
ORDER BY metric, ranked DESC, pos
