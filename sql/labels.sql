-- labels: the classifier's verdict on each sample, same key as samples.
CREATE TABLE IF NOT EXISTS labels (
    run_id VARCHAR, model VARCHAR, deployment VARCHAR, prompt_id VARCHAR, rep INTEGER,
    topic VARCHAR, topic_group VARCHAR, language VARCHAR, source_label VARCHAR,
    label VARCHAR, response_language VARCHAR, language_match BOOLEAN,
    canned_refusal BOOLEAN, canned_refusal_id VARCHAR, retracted BOOLEAN,
    empty_reasoning BOOLEAN, refusal_in_reasoning BOOLEAN, truncated BOOLEAN,
    moderation BOOLEAN, classifier VARCHAR, classifier_version VARCHAR, rule VARCHAR
);
DELETE FROM labels WHERE run_id = $run_id;
INSERT INTO labels BY NAME
SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false);
