-- report/overall: per study, deployment and model, pooled over its prompts this week;
-- k = repetitions per prompt as sampled.
SELECT study, deployment, model, count(DISTINCT prompt_id) AS n_prompts,
       sum(n_samples) AS n_samples, min(n_samples) AS k_min, max(n_samples) AS k_max,
       sum(n_non_answer) / nullif(sum(n_valid), 0) AS non_answer_rate,
       sum(n_refused) / nullif(sum(n_valid), 0) AS refusal_rate,
       sum(n_evasive) / nullif(sum(n_valid), 0) AS evasive_rate,
       sum(n_blocked) / nullif(sum(n_valid), 0) AS blocked_rate,
       sum(n_truncated) / nullif(sum(n_valid), 0) AS truncated_rate,
       sum(n_error) / sum(n_samples) AS error_rate,
       sum(n_language_mismatch) / nullif(sum(n_answers_lang_known), 0) AS language_mismatch_rate
FROM prompt_stats
WHERE week = $week
GROUP BY ALL
ORDER BY study, deployment, non_answer_rate DESC NULLS LAST, model
