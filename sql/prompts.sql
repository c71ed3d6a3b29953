-- prompts: one row per prompt variant of a published run (loaded per run from the lake).
-- The same prompt may come from two sources (recorded files of two deployments asking the
-- same questions); its id is a hash of its content, so one row per id is kept.
CREATE TABLE IF NOT EXISTS prompts (
    run_id VARCHAR, prompt_id VARCHAR, study VARCHAR, source VARCHAR, topic VARCHAR,
    topic_group VARCHAR, question_id VARCHAR, language VARCHAR, template_id VARCHAR,
    system_prompt_id VARCHAR, system_prompt VARCHAR, prompt_text VARCHAR,
    messages STRUCT(role VARCHAR, content VARCHAR)[]
);
DELETE FROM prompts WHERE run_id = $run_id;
INSERT INTO prompts
WITH src AS (
    SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false)
)
SELECT DISTINCT ON (prompt_id)
       $run_id AS run_id, prompt_id, study, source, topic, topic_group, question_id, language,
       template_id, system_prompt_id, system_prompt, prompt_text, messages
FROM src
ORDER BY prompt_id, source;
