-- audit_keys: one row per (model, deployment, prompt_id) of a staged run, for the `keys`
-- and `sample_counts` suites. Streams over the staged Parquet ($samples, $labels: file
-- lists), so memory is bounded by the number of prompts, not of samples.
--   samples_rows / samples_keys   rows and distinct repetitions in samples (equal: no duplicate keys)
--   labels_rows / labels_keys     the same in labels
--   matched_keys                  keys present in both (equal to both: no rows lost between stages)
--   live                          sampled by a live backend (vllm, openai), not recorded
WITH s AS (
    SELECT model, deployment, prompt_id, rep, backend
    FROM read_parquet($samples, union_by_name = true, hive_partitioning = false)
),
l AS (
    SELECT model, deployment, prompt_id, rep
    FROM read_parquet($labels, union_by_name = true, hive_partitioning = false)
),
sk AS (
    SELECT model, deployment, prompt_id, count(*) AS samples_rows, count(DISTINCT rep) AS samples_keys,
           bool_or(backend IN ('vllm', 'openai')) AS live
    FROM s GROUP BY model, deployment, prompt_id
),
lk AS (
    SELECT model, deployment, prompt_id, count(*) AS labels_rows, count(DISTINCT rep) AS labels_keys
    FROM l GROUP BY model, deployment, prompt_id
),
mk AS (
    SELECT model, deployment, prompt_id, count(*) AS matched_keys
    FROM (SELECT DISTINCT model, deployment, prompt_id, rep FROM s)
    JOIN (SELECT DISTINCT model, deployment, prompt_id, rep FROM l) USING (model, deployment, prompt_id, rep)
    GROUP BY model, deployment, prompt_id
)
SELECT model, deployment, prompt_id,
       coalesce(samples_rows, 0) AS samples_rows, coalesce(samples_keys, 0) AS samples_keys,
       coalesce(labels_rows, 0) AS labels_rows, coalesce(labels_keys, 0) AS labels_keys,
       coalesce(matched_keys, 0) AS matched_keys, coalesce(live, false) AS live
FROM sk
FULL OUTER JOIN lk USING (model, deployment, prompt_id)
LEFT JOIN mk USING (model, deployment, prompt_id)
ORDER BY model, deployment, prompt_id;
