-- report/totals: the week in one row (pooled over every cell; the headline's first line).
SELECT sum(n_samples) AS n_samples, sum(n_error) AS n_errors, sum(n_valid) AS n_valid,
       sum(n_non_answer) / nullif(sum(n_valid), 0) AS non_answer_rate,
       sum(n_refused) / nullif(sum(n_valid), 0) AS refusal_rate,
       sum(n_evasive) / nullif(sum(n_valid), 0) AS evasive_rate,
       sum(n_blocked) / nullif(sum(n_valid), 0) AS blocked_rate,
       sum(n_blocked) AS n_blocked,
       sum(n_truncated) / nullif(sum(n_valid), 0) AS truncated_rate,
       count(DISTINCT prompt_id) AS n_prompts
FROM prompt_stats
WHERE week = $week
