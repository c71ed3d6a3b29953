-- labels: the classifier's verdict on each sample, same key as samples.
CREATE TABLE IF NOT EXISTS labels (
    run_id VARCHAR, model VARCHAR, deployment VARCHAR, prompt_id VARCHAR, rep INTEGER,
    topic VARCHAR, topic_group VARCHAR, language VARCHAR, source_label VARCHAR,
    label VARCHAR, response_language VARCHAR, language_match BOOLEAN,
    canned_refusal BOOLEAN, canned_refusal_id VARCHAR, retracted BOOLEAN,
    empty_reasoning BOOLEAN, refusal_in_reasoning BOOLEAN, truncated BOOLEAN,
    moderation BOOLEAN, classifier VARCHAR, classifier_version VARCHAR, rule VARCHAR,
    unsure BOOLEAN, rule_label VARCHAR, judge_label VARCHAR, judge_version VARCHAR,
    decided_by VARCHAR, confidence DOUBLE
);
-- A warehouse created before the judge tier gains its columns (null for older runs).
ALTER TABLE labels ADD COLUMN IF NOT EXISTS unsure BOOLEAN;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS rule_label VARCHAR;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS judge_label VARCHAR;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS judge_version VARCHAR;
-- ... and before the semantic tier: which tier decided, and how sure (null for older runs).
ALTER TABLE labels ADD COLUMN IF NOT EXISTS decided_by VARCHAR;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS confidence DOUBLE;
DELETE FROM labels WHERE run_id = $run_id;
INSERT INTO labels BY NAME
SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false);
