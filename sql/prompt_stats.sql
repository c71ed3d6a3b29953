-- prompt_stats: one prompt variant in one run of one model and deployment.
-- p_refused is over samples that got a response (errors excluded; error share kept apart),
-- with a 95% Wilson interval over that prompt's repetitions. p_non_answer likewise for the
-- non-answers: refused + evasive + blocked (a provider's block or content filter is an
-- outcome, counted among the valid samples; only `error` is excluded). `flips` is
-- 0 < p_refused < 1, `flips_non_answer` 0 < p_non_answer < 1. n_truncated counts valid
-- samples the classifier flagged as cut by max_tokens. classifier_version is the newest
-- version among the prompt's labels (what classifier_confusion is matched on).
CREATE TABLE IF NOT EXISTS prompt_stats (
    run_id VARCHAR, study VARCHAR, week VARCHAR, model VARCHAR, deployment VARCHAR, prompt_id VARCHAR,
    topic VARCHAR, topic_group VARCHAR, question_id VARCHAR, language VARCHAR,
    template_id VARCHAR, system_prompt_id VARCHAR, n_samples BIGINT, n_valid BIGINT,
    n_refused BIGINT, n_evasive BIGINT, n_blocked BIGINT, n_non_answer BIGINT,
    n_complied BIGINT, n_error BIGINT, n_truncated BIGINT,
    n_answers_lang_known BIGINT, n_language_mismatch BIGINT, p_refused DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, flips BOOLEAN, p_non_answer DOUBLE,
    non_answer_ci_low DOUBLE, non_answer_ci_high DOUBLE, flips_non_answer BOOLEAN,
    classifier_version VARCHAR
);
DELETE FROM prompt_stats WHERE run_id = $run_id;
INSERT INTO prompt_stats BY NAME
-- The run's labels are counted by their key alone (the one pass over samples-sized data),
-- a prompt's attributes come from the run's prompts (one row per prompt) afterwards.
WITH counted AS (
    SELECT model, deployment, prompt_id,
           count(*) AS n_samples,
           count(*) FILTER (WHERE label <> 'error') AS n_valid,
           count(*) FILTER (WHERE label = 'refused') AS n_refused,
           count(*) FILTER (WHERE label = 'evasive') AS n_evasive,
           count(*) FILTER (WHERE label = 'blocked') AS n_blocked,
           count(*) FILTER (WHERE label IN ('refused', 'evasive', 'blocked')) AS n_non_answer,
           count(*) FILTER (WHERE label = 'complied') AS n_complied,
           count(*) FILTER (WHERE label = 'error') AS n_error,
           count(*) FILTER (WHERE label <> 'error' AND coalesce(truncated, false)) AS n_truncated,
           -- language mismatch is about answers: refusals, blocks and errors are not counted
           count(*) FILTER (WHERE label IN ('complied', 'evasive') AND language_match IS NOT NULL)
               AS n_answers_lang_known,
           count(*) FILTER (WHERE label IN ('complied', 'evasive') AND language_match = false)
               AS n_language_mismatch,
           max(classifier_version) AS classifier_version
    FROM labels
    WHERE run_id = $run_id
    GROUP BY model, deployment, prompt_id
),
final AS (
    SELECT c.*, p.topic, p.topic_group, p.question_id, p.language, p.template_id,
           p.system_prompt_id, r.week, r.study,
           CASE WHEN n_valid > 0 THEN n_refused / n_valid END AS p_refused,
           CASE WHEN n_valid > 0 THEN n_non_answer / n_valid END AS p_non_answer
    FROM counted AS c
    LEFT JOIN (SELECT * FROM prompts WHERE run_id = $run_id) AS p USING (prompt_id)
    CROSS JOIN (SELECT week, study FROM runs WHERE run_id = $run_id) AS r
)
SELECT $run_id AS run_id, study, week, model, deployment, prompt_id, topic, topic_group, question_id,
       language, template_id, system_prompt_id, n_samples, n_valid, n_refused, n_evasive,
       n_blocked, n_non_answer, n_complied, n_error, n_truncated, n_answers_lang_known,
       n_language_mismatch, p_refused,
       wilson_low(p_refused, n_valid) AS ci_low,
       wilson_high(p_refused, n_valid) AS ci_high,
       coalesce(p_refused > 0 AND p_refused < 1, false) AS flips,
       p_non_answer,
       wilson_low(p_non_answer, n_valid) AS non_answer_ci_low,
       wilson_high(p_non_answer, n_valid) AS non_answer_ci_high,
       coalesce(p_non_answer > 0 AND p_non_answer < 1, false) AS flips_non_answer,
       classifier_version
FROM final;
-- the run's blocked samples, on its runs row (when the run record did not carry them)
UPDATE runs SET n_blocked = (SELECT count(*) FROM labels WHERE run_id = $run_id AND label = 'blocked')
WHERE run_id = $run_id AND n_blocked IS NULL;
