-- prompt_weeks: one row per prompt of a model × deployment × week, the counts of every run
-- of that week summed: a prompt sampled in two runs of one week is one cluster. Rebuilt for
-- the weeks in $weeks only (the weeks a load touched; all of them on a full rebuild).
CREATE TABLE IF NOT EXISTS prompt_weeks (
    model VARCHAR, deployment VARCHAR, week VARCHAR, prompt_id VARCHAR, topic VARCHAR,
    topic_group VARCHAR, language VARCHAR, n_runs BIGINT, n_samples BIGINT, n_valid BIGINT,
    n_refused BIGINT, n_evasive BIGINT, n_error BIGINT, n_answers_lang_known BIGINT,
    n_language_mismatch BIGINT
);
DELETE FROM prompt_weeks WHERE list_contains($weeks, week);
INSERT INTO prompt_weeks BY NAME
-- a week with one run (the usual case) is that run's prompt_stats as they are; only weeks
-- with several runs need the grouping
WITH multi AS (
    SELECT week FROM prompt_stats
    WHERE list_contains($weeks, week)
    GROUP BY week HAVING count(DISTINCT run_id) > 1
)
SELECT model, deployment, week, prompt_id, topic, topic_group, language, 1 AS n_runs,
       n_samples, n_valid, n_refused, n_evasive, n_error, n_answers_lang_known, n_language_mismatch
FROM prompt_stats
WHERE list_contains($weeks, week) AND week NOT IN (SELECT week FROM multi)
UNION ALL BY NAME
SELECT model, deployment, week, prompt_id,
       any_value(topic) AS topic, any_value(topic_group) AS topic_group, any_value(language) AS language,
       count(*) AS n_runs, sum(n_samples) AS n_samples, sum(n_valid) AS n_valid,
       sum(n_refused) AS n_refused, sum(n_evasive) AS n_evasive, sum(n_error) AS n_error,
       sum(n_answers_lang_known) AS n_answers_lang_known,
       sum(n_language_mismatch) AS n_language_mismatch
FROM prompt_stats
WHERE week IN (SELECT week FROM multi)
GROUP BY model, deployment, week, prompt_id;
