-- audit_error_rates: one row per (model, deployment) of a staged run, for the `error_rates`
-- suite. A provider's block (label `blocked`: moderation, content filter, HTTP 451, a block
-- page; or the label's `moderation` flag on an older classifier's `error`) is an outcome
-- the study measures, a non-answer, not a failure of the pipeline: it is counted apart
-- (n_blocked, n_moderation) and not held against the bound. Transport failures stay errors.
WITH s AS (
    SELECT model, deployment, prompt_id, rep, error
    FROM read_parquet($samples, union_by_name = true, hive_partitioning = false)
),
l AS (
    SELECT DISTINCT ON (model, deployment, prompt_id, rep) model, deployment, prompt_id, rep, moderation, label
    FROM read_parquet($labels, union_by_name = true, hive_partitioning = false)
),
j AS (
    SELECT s.*, coalesce(l.moderation, false) OR coalesce(l.label = 'blocked', false) AS is_block,
           coalesce(l.label = 'blocked', false) AS is_blocked_label
    FROM s
    LEFT JOIN l USING (model, deployment, prompt_id, rep)
)
SELECT model, deployment, count(*) AS n_samples,
       count(error) FILTER (WHERE NOT is_block) AS n_errors,
       count(error) FILTER (WHERE is_block) AS n_moderation,
       count(*) FILTER (WHERE is_blocked_label) AS n_blocked,
       count(error) FILTER (WHERE NOT is_block) / count(*) AS error_rate
FROM j
GROUP BY model, deployment
ORDER BY model, deployment;
