-- runs: one row per published run (the run record is written to the lake last).
-- n_blocked (samples labelled `blocked`: provider blocks, counted apart from n_errors) is
-- the record's own when it has one, else counted from the labels by prompt_stats.sql.
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR, study VARCHAR, study_hash VARCHAR, run_date DATE, week VARCHAR,
    started_at TIMESTAMPTZ, published_at TIMESTAMPTZ, code_version VARCHAR,
    n_prompts BIGINT, n_samples BIGINT, n_errors BIGINT, repetitions INTEGER,
    models VARCHAR, deployments VARCHAR, classifier VARCHAR, validation VARCHAR, n_blocked BIGINT
);
DELETE FROM runs WHERE run_id = $run_id;
INSERT INTO runs BY NAME
SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false);
