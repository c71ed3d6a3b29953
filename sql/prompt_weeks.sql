-- prompt_weeks: one row per prompt of a study × model × deployment × week, the counts of
-- every run of that study and week summed: a prompt sampled in two runs of one week is one
-- cluster. Two studies are never pooled. Rebuilt for the weeks in $weeks only (the weeks a
-- load touched; all of them on a full rebuild). n_non_answer = refused + evasive + blocked.
CREATE TABLE IF NOT EXISTS prompt_weeks (
    study VARCHAR, model VARCHAR, deployment VARCHAR, week VARCHAR, prompt_id VARCHAR, topic VARCHAR,
    topic_group VARCHAR, language VARCHAR, n_runs BIGINT, n_samples BIGINT, n_valid BIGINT,
    n_refused BIGINT, n_evasive BIGINT, n_blocked BIGINT, n_non_answer BIGINT, n_error BIGINT,
    n_truncated BIGINT, n_answers_lang_known BIGINT, n_language_mismatch BIGINT,
    classifier_version VARCHAR
);
DELETE FROM prompt_weeks WHERE list_contains($weeks, week);
INSERT INTO prompt_weeks BY NAME
-- a (study, week) with one run (the usual case) is that run's prompt_stats as they are;
-- only those with several runs need the grouping
WITH multi AS (
    SELECT study, week FROM prompt_stats
    WHERE list_contains($weeks, week)
    GROUP BY study, week HAVING count(DISTINCT run_id) > 1
),
src AS (
    SELECT s.*, coalesce(s.n_blocked, 0) AS n_blocked_, m.week IS NOT NULL AS in_multi
    FROM prompt_stats AS s
    LEFT JOIN multi AS m ON m.week = s.week AND m.study IS NOT DISTINCT FROM s.study
    WHERE list_contains($weeks, s.week)
)
SELECT study, model, deployment, week, prompt_id, topic, topic_group, language, 1 AS n_runs,
       n_samples, n_valid, n_refused, n_evasive, n_blocked_ AS n_blocked,
       n_refused + n_evasive + n_blocked_ AS n_non_answer, n_error,
       coalesce(n_truncated, 0) AS n_truncated, n_answers_lang_known, n_language_mismatch,
       classifier_version
FROM src
WHERE NOT in_multi
UNION ALL BY NAME
SELECT study, model, deployment, week, prompt_id,
       any_value(topic) AS topic, any_value(topic_group) AS topic_group, any_value(language) AS language,
       count(*) AS n_runs, sum(n_samples) AS n_samples, sum(n_valid) AS n_valid,
       sum(n_refused) AS n_refused, sum(n_evasive) AS n_evasive, sum(n_blocked_) AS n_blocked,
       sum(n_refused + n_evasive + n_blocked_) AS n_non_answer, sum(n_error) AS n_error,
       sum(coalesce(n_truncated, 0)) AS n_truncated,
       sum(n_answers_lang_known) AS n_answers_lang_known,
       sum(n_language_mismatch) AS n_language_mismatch,
       max(classifier_version) AS classifier_version
FROM src
WHERE in_multi
GROUP BY study, model, deployment, week, prompt_id;
