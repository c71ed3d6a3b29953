-- refusal_rates: model × deployment × topic × language × week, rebuilt from prompt_stats
-- (small: one row per prompt and run), so a new run never rescans old samples.
--
-- The interval respects clustering: repetitions of one prompt are correlated, so the
-- variance of the ratio estimator p = Σ r_g / Σ m_g is the cluster-robust (CR1) one over
-- prompts g. It enters a Wilson interval through the effective sample size
-- n_eff = p(1-p) / se², bounded to [number of prompts, number of samples]; when p is 0 or 1
-- (se = 0) n_eff is the number of prompts, the conservative end (macros in macros.sql).
--
-- A prompt sampled in two runs of one week is one cluster: its counts are summed first.
CREATE OR REPLACE TABLE refusal_rates AS
WITH source AS (
    SELECT model, deployment, week, prompt_id,
           any_value(topic) AS topic, any_value(topic_group) AS topic_group,
           any_value(language) AS language,
           sum(n_samples) AS n_samples, sum(n_valid) AS n_valid, sum(n_refused) AS n_refused,
           sum(n_evasive) AS n_evasive, sum(n_error) AS n_error,
           sum(n_answers_lang_known) AS n_answers_lang_known,
           sum(n_language_mismatch) AS n_language_mismatch
    FROM prompt_stats
    GROUP BY model, deployment, week, prompt_id
),
per_prompt AS (
    SELECT *, n_refused / nullif(n_valid, 0) AS p_refused FROM source
),
-- every cell, including one whose every sample failed (rates null, error_rate 1)
cells AS (
    SELECT model, deployment, topic, any_value(topic_group) AS topic_group, language, week,
           count(*) FILTER (WHERE n_valid > 0) AS n_prompts,
           sum(n_samples) AS n_samples,
           sum(n_valid) AS n_valid,
           sum(n_refused) AS n_refused,
           sum(n_evasive) AS n_evasive,
           sum(n_error) AS n_error,
           sum(n_answers_lang_known) AS n_answers_lang_known,
           sum(n_language_mismatch) AS n_language_mismatch,
           avg(CASE WHEN p_refused > 0 AND p_refused < 1 THEN 1.0 ELSE 0.0 END)
               FILTER (WHERE n_valid > 0) AS flip_rate,
           var_pop(p_refused) AS var_between,
           avg(p_refused * (1 - p_refused)) AS var_within,
           sum(n_refused) / nullif(sum(n_valid), 0) AS refusal_rate
    FROM per_prompt
    GROUP BY model, deployment, topic, language, week
),
robust AS (
    SELECT c.model, c.deployment, c.topic, c.language, c.week,
           CASE WHEN count(*) > 1 THEN
               count(*) / (count(*) - 1.0)
               * sum(power(s.n_refused - c.refusal_rate * s.n_valid, 2)) / power(sum(s.n_valid), 2)
           END AS se2
    FROM per_prompt AS s
    JOIN cells AS c USING (model, deployment, topic, language, week)
    WHERE s.n_valid > 0
    GROUP BY ALL
),
final AS (
    SELECT c.*, r.se2, n_eff(c.refusal_rate, r.se2, c.n_prompts, c.n_valid) AS n_eff
    FROM cells AS c
    LEFT JOIN robust AS r USING (model, deployment, topic, language, week)
)
SELECT model, deployment, topic, topic_group, language, week,
       n_prompts, n_samples, n_valid, n_refused,
       refusal_rate,
       wilson_low(refusal_rate, n_eff) AS ci_low,
       wilson_high(refusal_rate, n_eff) AS ci_high,
       sqrt(se2) AS cluster_se,
       n_eff,
       n_evasive / nullif(n_valid, 0) AS evasive_rate,
       n_error / n_samples AS error_rate,
       CASE WHEN n_answers_lang_known > 0 THEN n_language_mismatch / n_answers_lang_known END
           AS language_mismatch_rate,
       flip_rate,
       CASE WHEN var_between + var_within > 0 THEN var_between / (var_between + var_within) END
           AS between_prompt_share
FROM final
ORDER BY model, deployment, topic, language, week;
