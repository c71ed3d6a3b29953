-- comparisons: every test the report and the compare_* views show, one row per pair of
-- cells and metric, from refusal_rates and prompt_weeks, rebuilt for the weeks in $weeks
-- only (a loaded week and the week after it, whose week-over-week tests look back at it).
-- Both sides are always of one study: two studies are never compared or pooled.
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
    study VARCHAR, metric VARCHAR, kind VARCHAR, model VARCHAR, model_b VARCHAR,
    deployment_a VARCHAR, deployment_b VARCHAR, topic VARCHAR,
    topic_group VARCHAR, language_a VARCHAR, language_b VARCHAR, week_a VARCHAR, week_b VARCHAR,
    n_prompts_a BIGINT, n_prompts_b BIGINT, rate_a DOUBLE, rate_b DOUBLE, n_eff_a DOUBLE,
    n_eff_b DOUBLE, diff DOUBLE, diff_ci_low DOUBLE, diff_ci_high DOUBLE, test VARCHAR, z DOUBLE,
    df DOUBLE, p_value DOUBLE, family_size BIGINT, q_value DOUBLE, significant BOOLEAN
);
DELETE FROM comparisons WHERE list_contains($weeks, week_a);
INSERT INTO comparisons BY NAME
WITH metrics AS (
    SELECT * FROM (VALUES ('refusal'), ('non_answer')) AS v(metric)
),
-- each cell once per metric: its rate, effective n and interval for that metric
rates AS (
    SELECT r.study, r.model, r.deployment, r.topic, r.topic_group, r.language, r.week, r.n_prompts,
           m.metric,
           CASE m.metric WHEN 'refusal' THEN r.refusal_rate ELSE r.non_answer_rate END AS rate,
           CASE m.metric WHEN 'refusal' THEN r.n_eff ELSE r.non_answer_n_eff END AS n_eff,
           CASE m.metric WHEN 'refusal' THEN r.ci_low ELSE r.non_answer_ci_low END AS lo,
           CASE m.metric WHEN 'refusal' THEN r.ci_high ELSE r.non_answer_ci_high END AS hi
    FROM refusal_rates AS r CROSS JOIN metrics AS m
    WHERE r.refusal_rate IS NOT NULL
),
previous AS (
    SELECT study, model, deployment, topic, language, week, lag(week) OVER w AS prev_week
    FROM (SELECT DISTINCT study, model, deployment, topic, language, week FROM rates)
    WINDOW w AS (PARTITION BY study, model, deployment, topic, language ORDER BY week)
),
this_week AS (
    SELECT * FROM previous WHERE list_contains($weeks, week)
),
-- the prompts (runs of a week summed, see prompt_weeks.sql) of the weeks compared; n_pos
-- is the metric's count
per_prompt AS (
    SELECT p.study, p.model, p.deployment, p.week, p.prompt_id, p.topic, p.topic_group, p.language,
           p.n_valid, m.metric,
           CASE m.metric WHEN 'refusal' THEN p.n_refused ELSE p.n_non_answer END AS n_pos
    FROM prompt_weeks AS p CROSS JOIN metrics AS m
    WHERE p.n_valid > 0
      AND (list_contains($weeks, p.week) OR p.week IN (SELECT prev_week FROM this_week))
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
-- prompts asked on both sides of a same-prompt comparison, one row per prompt and metric
shared AS (
    SELECT a.study, a.metric, 'week' AS kind, a.model, a.model AS model_b,
           a.deployment AS deployment_a, a.deployment AS deployment_b,
           a.topic, a.topic_group, a.language, a.week AS week_a, b.week AS week_b, a.prompt_id,
           a.n_valid AS valid_a, a.n_pos AS pos_a, b.n_valid AS valid_b, b.n_pos AS pos_b
    FROM current AS a
    JOIN per_prompt AS b
      ON b.study IS NOT DISTINCT FROM a.study AND b.metric = a.metric
     AND b.model = a.model AND b.deployment = a.deployment AND b.week = a.prev_week
     AND b.prompt_id = a.prompt_id
    UNION ALL
    SELECT a.study, a.metric, 'deployment', a.model, a.model, a.deployment, b.deployment,
           a.topic, a.topic_group, a.language, a.week, b.week, a.prompt_id,
           a.n_valid, a.n_pos, b.n_valid, b.n_pos
    FROM per_prompt AS a
    JOIN per_prompt AS b
      ON b.study IS NOT DISTINCT FROM a.study AND b.metric = a.metric
     AND a.model = b.model AND a.week = b.week AND a.prompt_id = b.prompt_id
     AND a.deployment < b.deployment
    WHERE list_contains($weeks, a.week)
    UNION ALL
    SELECT a.study, a.metric, 'model', a.model, b.model, a.deployment, b.deployment,
           a.topic, a.topic_group, a.language, a.week, b.week, a.prompt_id,
           a.n_valid, a.n_pos, b.n_valid, b.n_pos
    FROM per_prompt AS a
    JOIN per_prompt AS b
      ON b.study IS NOT DISTINCT FROM a.study AND b.metric = a.metric
     AND a.deployment = b.deployment AND a.week = b.week AND a.prompt_id = b.prompt_id
     AND a.model < b.model
    WHERE list_contains($weeks, a.week)
),
-- Cochran-Mantel-Haenszel over prompts: observed minus expected events of side a in each
-- prompt's 2×2 table, and the hypergeometric variance
stratified AS (
    SELECT study, metric, kind, model, model_b, deployment_a, deployment_b, topic,
           any_value(topic_group) AS topic_group, language, week_a, week_b, count(*) AS n_prompts,
           sum(valid_a) AS valid_a, sum(pos_a) AS pos_a,
           sum(valid_b) AS valid_b, sum(pos_b) AS pos_b,
           sum(pos_a - valid_a * (pos_a + pos_b) / (valid_a + valid_b)) AS cmh_num,
           sum(CASE WHEN valid_a + valid_b > 1 THEN
                   valid_a * valid_b * (pos_a + pos_b) * (valid_a + valid_b - pos_a - pos_b)
                   / (power(valid_a + valid_b, 2) * (valid_a + valid_b - 1.0)) ELSE 0 END) AS cmh_var
    FROM shared
    GROUP BY study, metric, kind, model, model_b, deployment_a, deployment_b, topic, language, week_a, week_b
),
same_prompts AS (
    SELECT study, metric, kind, model, model_b, deployment_a, deployment_b, topic, topic_group,
           language AS language_a, language AS language_b, week_a, week_b,
           n_prompts AS n_prompts_a, n_prompts AS n_prompts_b,
           pos_a / valid_a AS rate_a, pos_b / valid_b AS rate_b,
           valid_a::DOUBLE AS n_eff_a, valid_b::DOUBLE AS n_eff_b,
           wilson_low(pos_a / valid_a, valid_a) AS lo_a, wilson_high(pos_a / valid_a, valid_a) AS hi_a,
           wilson_low(pos_b / valid_b, valid_b) AS lo_b, wilson_high(pos_b / valid_b, valid_b) AS hi_b,
           CASE WHEN cmh_var > 0 THEN cmh_num / sqrt(cmh_var) ELSE 0.0 END AS z,
           NULL::DOUBLE AS df,
           'cmh' AS test
    FROM stratified
),
languages AS (
    SELECT a.study, a.metric, 'language' AS kind, a.model, a.model AS model_b,
           a.deployment AS deployment_a, a.deployment AS deployment_b,
           a.topic, a.topic_group, a.language AS language_a, b.language AS language_b,
           a.week AS week_a, b.week AS week_b, a.n_prompts AS n_prompts_a, b.n_prompts AS n_prompts_b,
           a.rate AS rate_a, b.rate AS rate_b, a.n_eff AS n_eff_a, b.n_eff AS n_eff_b,
           a.lo AS lo_a, a.hi AS hi_a, b.lo AS lo_b, b.hi AS hi_b,
           diff_z(a.rate, a.n_eff, b.rate, b.n_eff) AS z,
           diff_df(a.n_eff, a.n_prompts, b.n_eff, b.n_prompts) AS df,
           'cluster_t' AS test
    FROM rates AS a
    JOIN rates AS b
      ON b.study IS NOT DISTINCT FROM a.study AND a.metric = b.metric
     AND a.model = b.model AND a.deployment = b.deployment AND a.topic = b.topic
     AND a.week = b.week AND a.language < b.language
    WHERE list_contains($weeks, a.week)
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
SELECT study, metric, kind, model, model_b, deployment_a, deployment_b, topic, topic_group,
       language_a, language_b, week_a, week_b, n_prompts_a, n_prompts_b, rate_a, rate_b,
       n_eff_a, n_eff_b, diff, diff_ci_low, diff_ci_high, test, z, df, p_value,
       m AS family_size, q_value, q_value < 0.05 AS significant
FROM adjusted;
