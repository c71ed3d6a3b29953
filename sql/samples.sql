-- samples: one row per response, key (run_id, model, deployment, prompt_id, rep).
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR, study VARCHAR, model VARCHAR, deployment VARCHAR, backend VARCHAR,
    prompt_id VARCHAR, rep INTEGER, seed BIGINT, topic VARCHAR, topic_group VARCHAR,
    question_id VARCHAR, language VARCHAR, template_id VARCHAR, system_prompt_id VARCHAR,
    temperature DOUBLE, top_p DOUBLE, max_tokens INTEGER, response_text VARCHAR,
    reasoning_text VARCHAR, finish_reason VARCHAR, prompt_tokens INTEGER,
    completion_tokens INTEGER, latency_s DOUBLE, error VARCHAR, streamed_text VARCHAR,
    source_label VARCHAR, sampled_at TIMESTAMPTZ
);
DELETE FROM samples WHERE run_id = $run_id;
INSERT INTO samples BY NAME
SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false);
