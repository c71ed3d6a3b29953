-- prompt_stats: one prompt variant in one run of one model and deployment.
-- p_refused is over samples that got a response (errors excluded; error share kept apart),
-- with a 95% Wilson interval over that prompt's repetitions.
CREATE TABLE IF NOT EXISTS prompt_stats (
    run_id VARCHAR, week VARCHAR, model VARCHAR, deployment VARCHAR, prompt_id VARCHAR,
    topic VARCHAR, topic_group VARCHAR, question_id VARCHAR, language VARCHAR,
    template_id VARCHAR, system_prompt_id VARCHAR, n_samples BIGINT, n_valid BIGINT,
    n_refused BIGINT, n_evasive BIGINT, n_complied BIGINT, n_error BIGINT,
    n_answers_lang_known BIGINT, n_language_mismatch BIGINT, p_refused DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, flips BOOLEAN
);
DELETE FROM prompt_stats WHERE run_id = $run_id;
INSERT INTO prompt_stats BY NAME
-- Labels carry the sample key, topic and language, and prompts the rest of a prompt's
-- attributes: no join of samples with labels (two tables of the run's size), only a join
-- of the run's labels with its prompts (one row per prompt).
WITH joined AS (
    SELECT l.run_id, l.model, l.deployment, l.prompt_id, l.rep, l.topic, l.topic_group,
           p.question_id, l.language, p.template_id, p.system_prompt_id,
           l.label, l.language_match
    FROM labels AS l
    LEFT JOIN prompts AS p ON p.run_id = l.run_id AND p.prompt_id = l.prompt_id
    WHERE l.run_id = $run_id
),
counted AS (
    SELECT run_id, model, deployment, prompt_id,
           any_value(topic) AS topic, any_value(topic_group) AS topic_group,
           any_value(question_id) AS question_id, any_value(language) AS language,
           any_value(template_id) AS template_id, any_value(system_prompt_id) AS system_prompt_id,
           count(*) AS n_samples,
           count(*) FILTER (WHERE label <> 'error') AS n_valid,
           count(*) FILTER (WHERE label = 'refused') AS n_refused,
           count(*) FILTER (WHERE label = 'evasive') AS n_evasive,
           count(*) FILTER (WHERE label = 'complied') AS n_complied,
           count(*) FILTER (WHERE label = 'error') AS n_error,
           -- language mismatch is about answers: refusals and errors are not counted
           count(*) FILTER (WHERE label IN ('complied', 'evasive') AND language_match IS NOT NULL)
               AS n_answers_lang_known,
           count(*) FILTER (WHERE label IN ('complied', 'evasive') AND language_match = false)
               AS n_language_mismatch
    FROM joined
    GROUP BY ALL
),
with_week AS (
    SELECT c.*, r.week FROM counted AS c JOIN runs AS r USING (run_id)
),
final AS (
    SELECT *,
           CASE WHEN n_valid > 0 THEN n_refused / n_valid END AS p_refused,
           1.959963984540054 AS z
    FROM with_week
)
SELECT run_id, week, model, deployment, prompt_id, topic, topic_group, question_id, language,
       template_id, system_prompt_id, n_samples, n_valid, n_refused, n_evasive, n_complied,
       n_error, n_answers_lang_known, n_language_mismatch, p_refused,
       CASE WHEN n_valid > 0 THEN
           (p_refused + z * z / (2 * n_valid)
            - z * sqrt(p_refused * (1 - p_refused) / n_valid + z * z / (4 * n_valid * n_valid)))
           / (1 + z * z / n_valid) END AS ci_low,
       CASE WHEN n_valid > 0 THEN
           (p_refused + z * z / (2 * n_valid)
            + z * sqrt(p_refused * (1 - p_refused) / n_valid + z * z / (4 * n_valid * n_valid)))
           / (1 + z * z / n_valid) END AS ci_high,
       coalesce(p_refused > 0 AND p_refused < 1, false) AS flips
FROM final;
