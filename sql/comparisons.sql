-- comparisons: every test the report and the compare_* views show, one row per pair of
-- cells and metric, from refusal_rates and prompt_weeks, rebuilt for the weeks in $weeks
-- only (a loaded week and the week after it, whose week-over-week tests look back at it).
-- Cells are per study (refusal_rates), so nothing is pooled across studies. Week and language
-- tests compare cells of one study (study_b = study). Deployment and model tests pair the
-- same prompts (same prompt_id) answered in the same week, also across studies: the app's
-- answers are often imported by one study and the local weights sampled by another;
-- `study` is side a's, `study_b` side b's.
--
--   metric = 'refusal'     refused / valid
--   metric = 'non_answer'  (refused + evasive + blocked) / valid
--
--   kind = 'week'        a cell this week against the same cell in the previous week with
--                        data, on the prompts both weeks asked
--   kind = 'deployment'  one model in two deployments (a < b), on the prompts both answered,
--                        per topic × language × week
--   kind = 'model'       two models (model < model_b) in one deployment, on the prompts both
--                        answered (same prompt_id), per topic × language × week
--   kind = 'language'    two languages of one model × deployment × topic × week (a < b)
--
-- Same prompts on both sides (weeks, deployments, models): the question is whether the
-- behaviour differs on these prompts, so each prompt is a stratum and the test is
-- Cochran-Mantel-Haenszel (repetitions of one prompt are independent given the prompt);
-- the interval of the difference is Newcombe's hybrid score interval from the two sides'
-- Wilson intervals over samples (conditional on the shared prompts).
--
-- Different prompts (languages: translations are other prompts): each side is a clustered
-- proportion with its design-effect n_eff (see refusal_rates.sql); the statistic is a
-- design-effect-adjusted two-proportion one, referred to a t distribution with
-- Welch-Satterthwaite degrees of freedom over the prompt clusters (macros diff_z, diff_df,
-- p_t); the interval is Newcombe's from the two cells' own intervals (refusal_rates ci_low/
-- ci_high or non_answer_ci_low/high), so it is consistent with them: two 0% cells give at
-- least [-upper_b, upper_a].
--
-- False discoveries: q_value is the Benjamini-Hochberg adjusted p-value within one family,
-- a metric and kind in a week (every study, model, deployment, topic and language compared
-- that week); `significant` is q_value < 0.05.
CREATE TABLE IF NOT EXISTS comparisons (
    study VARCHAR, study_b VARCHAR, metric VARCHAR, kind VARCHAR, model VARCHAR, model_b VARCHAR,
    deployment_a VARCHAR, deployment_b VARCHAR, topic VARCHAR,
    topic_group VARCHAR, language_a VARCHAR, language_b VARCHAR, week_a VARCHAR, week_b VARCHAR,
    n_prompts_a BIGINT, n_prompts_b BIGINT, rate_a DOUBLE, rate_b DOUBLE, n_eff_a DOUBLE,
    n_eff_b DOUBLE, diff DOUBLE, diff_ci_low DOUBLE, diff_ci_high DOUBLE, test VARCHAR, z DOUBLE,
    df DOUBLE, p_value DOUBLE, family_size BIGINT, q_value DOUBLE, significant BOOLEAN
);
DELETE FROM comparisons WHERE list_contains($weeks, week_a);
INSERT INTO comparisons BY NAME
-- Both metrics ride along in one row through the joins and sums (r: refusal, a: non-answer)
-- and are split into one row per metric only at the end: the joins are the cost.
WITH metrics AS (
    SELECT * FROM (VALUES ('refusal'), ('non_answer')) AS v(metric)
),
rates AS (
    SELECT study, model, deployment, topic, topic_group, language, week, n_prompts,
           refusal_rate, n_eff, ci_low, ci_high,
           non_answer_rate, non_answer_n_eff, non_answer_ci_low, non_answer_ci_high
    FROM refusal_rates
    WHERE refusal_rate IS NOT NULL
),
previous AS (
    SELECT study, model, deployment, topic, language, week, lag(week) OVER w AS prev_week
    FROM rates
    WINDOW w AS (PARTITION BY study, model, deployment, topic, language ORDER BY week)
),
this_week AS (
    SELECT * FROM previous WHERE list_contains($weeks, week)
),
-- the prompts (runs of a week summed, see prompt_weeks.sql) of the weeks compared
per_prompt AS (
    SELECT study, model, deployment, week, prompt_id, topic, topic_group, language,
           n_valid, n_refused AS n_r, n_non_answer AS n_a
    FROM prompt_weeks
    WHERE n_valid > 0
      AND (list_contains($weeks, week) OR week IN (SELECT prev_week FROM this_week))
),
-- this week's prompts, each with the week its cell is compared with
current AS MATERIALIZED (
    SELECT a.*, v.prev_week
    FROM per_prompt AS a
    JOIN this_week AS v
      ON v.study IS NOT DISTINCT FROM a.study AND v.model = a.model AND v.deployment = a.deployment
     AND v.topic = a.topic AND v.language = a.language AND v.week = a.week
    WHERE v.prev_week IS NOT NULL
),
-- prompts asked on both sides of a same-prompt comparison, one row per prompt
shared AS (
    SELECT a.study, b.study AS study_b, 'week' AS kind, a.model, a.model AS model_b,
           a.deployment AS deployment_a, a.deployment AS deployment_b,
           a.topic, a.topic_group, a.language, a.week AS week_a, b.week AS week_b, a.prompt_id,
           a.n_valid AS valid_a, a.n_r AS r_a, a.n_a AS a_a, b.n_valid AS valid_b, b.n_r AS r_b, b.n_a AS a_b
    FROM current AS a
    JOIN per_prompt AS b
      ON b.study IS NOT DISTINCT FROM a.study
     AND b.model = a.model AND b.deployment = a.deployment AND b.week = a.prev_week
     AND b.prompt_id = a.prompt_id
    UNION ALL
    SELECT a.study, b.study, 'deployment', a.model, a.model, a.deployment, b.deployment,
           a.topic, a.topic_group, a.language, a.week, b.week, a.prompt_id,
           a.n_valid, a.n_r, a.n_a, b.n_valid, b.n_r, b.n_a
    FROM per_prompt AS a
    JOIN per_prompt AS b
      ON a.model = b.model AND a.week = b.week AND a.prompt_id = b.prompt_id
     AND a.deployment < b.deployment
    WHERE list_contains($weeks, a.week)
    UNION ALL
    SELECT a.study, b.study, 'model', a.model, b.model, a.deployment, b.deployment,
           a.topic, a.topic_group, a.language, a.week, b.week, a.prompt_id,
           a.n_valid, a.n_r, a.n_a, b.n_valid, b.n_r, b.n_a
    FROM per_prompt AS a
    JOIN per_prompt AS b
      ON a.deployment = b.deployment AND a.week = b.week AND a.prompt_id = b.prompt_id
     AND a.model < b.model
    WHERE list_contains($weeks, a.week)
),
-- Cochran-Mantel-Haenszel over prompts: observed minus expected events of side a in each
-- prompt's 2×2 table, and the hypergeometric variance, for both metrics
stratified AS (
    SELECT study, study_b, kind, model, model_b, deployment_a, deployment_b, topic,
           any_value(topic_group) AS topic_group, language, week_a, week_b, count(*) AS n_prompts,
           sum(valid_a) AS valid_a, sum(valid_b) AS valid_b,
           sum(r_a) AS r_a, sum(r_b) AS r_b, sum(a_a) AS a_a, sum(a_b) AS a_b,
           sum(r_a - valid_a * (r_a + r_b) / (valid_a + valid_b)) AS num_r,
           sum(CASE WHEN valid_a + valid_b > 1 THEN
                   valid_a * valid_b * (r_a + r_b) * (valid_a + valid_b - r_a - r_b)
                   / (power(valid_a + valid_b, 2) * (valid_a + valid_b - 1.0)) ELSE 0 END) AS var_r,
           sum(a_a - valid_a * (a_a + a_b) / (valid_a + valid_b)) AS num_a,
           sum(CASE WHEN valid_a + valid_b > 1 THEN
                   valid_a * valid_b * (a_a + a_b) * (valid_a + valid_b - a_a - a_b)
                   / (power(valid_a + valid_b, 2) * (valid_a + valid_b - 1.0)) ELSE 0 END) AS var_a
    FROM shared
    GROUP BY study, study_b, kind, model, model_b, deployment_a, deployment_b, topic, language, week_a, week_b
),
same_prompts AS (
    SELECT study, study_b, metric, kind, model, model_b, deployment_a, deployment_b, topic, topic_group,
           language AS language_a, language AS language_b, week_a, week_b,
           n_prompts AS n_prompts_a, n_prompts AS n_prompts_b,
           pos_a / valid_a AS rate_a, pos_b / valid_b AS rate_b,
           valid_a::DOUBLE AS n_eff_a, valid_b::DOUBLE AS n_eff_b,
           wilson_low(pos_a / valid_a, valid_a) AS lo_a, wilson_high(pos_a / valid_a, valid_a) AS hi_a,
           wilson_low(pos_b / valid_b, valid_b) AS lo_b, wilson_high(pos_b / valid_b, valid_b) AS hi_b,
           CASE WHEN cmh_var > 0 THEN cmh_num / sqrt(cmh_var) ELSE 0.0 END AS z,
           NULL::DOUBLE AS df,
           'cmh' AS test
    FROM (
        SELECT s.*, m.metric,
               CASE m.metric WHEN 'refusal' THEN r_a ELSE a_a END AS pos_a,
               CASE m.metric WHEN 'refusal' THEN r_b ELSE a_b END AS pos_b,
               CASE m.metric WHEN 'refusal' THEN num_r ELSE num_a END AS cmh_num,
               CASE m.metric WHEN 'refusal' THEN var_r ELSE var_a END AS cmh_var
        FROM stratified AS s CROSS JOIN metrics AS m
    )
),
language_pairs AS (
    SELECT a.study, b.study AS study_b, a.model, a.deployment, a.topic, a.topic_group,
           a.language AS language_a, b.language AS language_b, a.week AS week_a, b.week AS week_b,
           a.n_prompts AS n_prompts_a, b.n_prompts AS n_prompts_b,
           a.refusal_rate AS r_rate_a, a.n_eff AS r_neff_a, a.ci_low AS r_lo_a, a.ci_high AS r_hi_a,
           b.refusal_rate AS r_rate_b, b.n_eff AS r_neff_b, b.ci_low AS r_lo_b, b.ci_high AS r_hi_b,
           a.non_answer_rate AS a_rate_a, a.non_answer_n_eff AS a_neff_a,
           a.non_answer_ci_low AS a_lo_a, a.non_answer_ci_high AS a_hi_a,
           b.non_answer_rate AS a_rate_b, b.non_answer_n_eff AS a_neff_b,
           b.non_answer_ci_low AS a_lo_b, b.non_answer_ci_high AS a_hi_b
    FROM rates AS a
    JOIN rates AS b
      ON b.study IS NOT DISTINCT FROM a.study
     AND a.model = b.model AND a.deployment = b.deployment AND a.topic = b.topic
     AND a.week = b.week AND a.language < b.language
    WHERE list_contains($weeks, a.week)
),
languages AS (
    SELECT study, study_b, metric, 'language' AS kind, model, model AS model_b,
           deployment AS deployment_a, deployment AS deployment_b, topic, topic_group,
           language_a, language_b, week_a, week_b, n_prompts_a, n_prompts_b,
           rate_a, rate_b, n_eff_a, n_eff_b, lo_a, hi_a, lo_b, hi_b,
           diff_z(rate_a, n_eff_a, rate_b, n_eff_b) AS z,
           diff_df(n_eff_a, n_prompts_a, n_eff_b, n_prompts_b) AS df,
           'cluster_t' AS test
    FROM (
        SELECT p.*, m.metric,
               CASE m.metric WHEN 'refusal' THEN r_rate_a ELSE a_rate_a END AS rate_a,
               CASE m.metric WHEN 'refusal' THEN r_rate_b ELSE a_rate_b END AS rate_b,
               CASE m.metric WHEN 'refusal' THEN r_neff_a ELSE a_neff_a END AS n_eff_a,
               CASE m.metric WHEN 'refusal' THEN r_neff_b ELSE a_neff_b END AS n_eff_b,
               CASE m.metric WHEN 'refusal' THEN r_lo_a ELSE a_lo_a END AS lo_a,
               CASE m.metric WHEN 'refusal' THEN r_hi_a ELSE a_hi_a END AS hi_a,
               CASE m.metric WHEN 'refusal' THEN r_lo_b ELSE a_lo_b END AS lo_b,
               CASE m.metric WHEN 'refusal' THEN r_hi_b ELSE a_hi_b END AS hi_b
        FROM language_pairs AS p CROSS JOIN metrics AS m
    )
),
pairs AS (
    SELECT * FROM same_prompts
    UNION ALL BY NAME SELECT * FROM languages
),
tested AS (
    SELECT *, rate_a - rate_b AS diff,
           diff_low(rate_a, lo_a, hi_a, rate_b, lo_b, hi_b) AS diff_ci_low,
           diff_high(rate_a, lo_a, hi_a, rate_b, lo_b, hi_b) AS diff_ci_high,
           CASE WHEN df IS NULL THEN p_two_sided(z) ELSE p_t(z, df) END AS p_value
    FROM pairs
),
numbered AS (
    SELECT *, row_number() OVER () AS id FROM tested
),
-- BH on a narrow projection (sorting whole rows is most of the cost otherwise); ties in p
-- get the same q whatever their order, so p alone orders the step-up
ranked AS (
    SELECT id, metric, kind, week_a, p_value,
           count(*) OVER (PARTITION BY metric, kind, week_a) AS m,
           row_number() OVER (PARTITION BY metric, kind, week_a ORDER BY p_value DESC) AS from_top
    FROM numbered
),
bh AS (
    -- q_(i) = min over j >= i of p_(j) m / j, with rank j = m - from_top + 1
    SELECT id, m, least(1.0, min(p_value * m / (m - from_top + 1)) OVER (
                  PARTITION BY metric, kind, week_a ORDER BY from_top
                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS q_value
    FROM ranked
),
adjusted AS (
    SELECT * FROM numbered JOIN bh USING (id)
)
SELECT study, study_b, metric, kind, model, model_b, deployment_a, deployment_b, topic, topic_group,
       language_a, language_b, week_a, week_b, n_prompts_a, n_prompts_b, rate_a, rate_b,
       n_eff_a, n_eff_b, diff, diff_ci_low, diff_ci_high, test, z, df, p_value,
       m AS family_size, q_value, q_value < 0.05 AS significant
FROM adjusted;
