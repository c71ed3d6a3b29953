-- report/flagged: cells to warn about, each with why: 'truncated' when more than $truncated
-- of its answers were cut by max_tokens (such an answer is not counted evasive, but the cell
-- measures less than it seems), 'blocked' when a provider blocked any request (a censorship
-- finding, counted among the non-answers and shown on its own). $limit rows per kind.
WITH flagged AS (
    SELECT 'truncated' AS kind, *, truncated_rate AS rate FROM refusal_rates
    WHERE week = $week AND truncated_rate > $truncated
    UNION ALL BY NAME
    SELECT 'blocked' AS kind, *, blocked_rate AS rate FROM refusal_rates
    WHERE week = $week AND n_blocked > 0
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY kind ORDER BY rate DESC, study, model, deployment, topic, language) AS pos,
           count(*) OVER (PARTITION BY kind) AS n_kind
    FROM flagged
)
SELECT kind, pos, n_kind, study, model, deployment, topic, language, n_prompts, n_samples, n_valid,
       n_truncated, n_blocked, truncated_rate, blocked_rate, non_answer_rate, refusal_rate, evasive_rate
FROM ranked
WHERE pos <= $limit
ORDER BY kind, pos
