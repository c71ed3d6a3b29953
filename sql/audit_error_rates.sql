-- audit_error_rates: one row per (model, deployment) of a staged run, for the `error_rates`
-- suite. A provider's moderation error (the label's `moderation` flag: the provider blocked
-- the answer) is an outcome the study measures, not a failure of the pipeline, so it is
-- counted apart and not held against the bound.
WITH s AS (
    SELECT model, deployment, prompt_id, rep, error
    FROM read_parquet($samples, union_by_name = true, hive_partitioning = false)
),
l AS (
    SELECT DISTINCT ON (model, deployment, prompt_id, rep) model, deployment, prompt_id, rep, moderation
    FROM read_parquet($labels, union_by_name = true, hive_partitioning = false)
)
SELECT model, deployment, count(*) AS n_samples, count(s.error) AS n_errors,
       count(s.error) FILTER (WHERE coalesce(l.moderation, false)) AS n_moderation,
       (count(s.error) - count(s.error) FILTER (WHERE coalesce(l.moderation, false))) / count(*) AS error_rate
FROM s
LEFT JOIN l USING (model, deployment, prompt_id, rep)
GROUP BY model, deployment
ORDER BY model, deployment;
