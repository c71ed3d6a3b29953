-- comparisons: every test the report and the compare_* views show, one row per pair of
-- cells, from refusal_rates and prompt_weeks, rebuilt for the weeks in $weeks only (a
-- loaded week and the week after it, whose week-over-week tests look back at it).
--
--   kind = 'week'        a cell this week against the same cell in the previous week with
--                        data, on the prompts both weeks asked
--   kind = 'deployment'  one model in two deployments (a < b), on the prompts both answered,
--                        per topic × language × week
--   kind = 'language'    two languages of one model × deployment × topic × week (a < b)
--
-- Same prompts on both sides (weeks, deployments): the question is whether the model
-- behaves differently on these prompts, so each prompt is a stratum and the test is
-- Cochran-Mantel-Haenszel (repetitions of one prompt are independent given the prompt);
-- the interval of the difference is Newcombe's hybrid score interval from the two sides'
-- Wilson intervals over samples.
--
-- Different prompts (languages: translations are other prompts): each side is a clustered
-- proportion with its effective sample size n_eff (see refusal_rates.sql); the statistic is
-- a design-effect-adjusted two-proportion one, referred to a t distribution with
-- Welch-Satterthwaite degrees of freedom over the prompt clusters (macros diff_z, diff_df,
-- p_t); the interval is Newcombe's from the cluster-aware Wilson intervals.
--
-- False discoveries: q_value is the Benjamini-Hochberg adjusted p-value within one family,
-- a kind in a week (every model, deployment, topic and language compared that week);
-- `significant` is q_value < 0.05, so at most about 5% of flagged changes are expected
-- to be false.
CREATE TABLE IF NOT EXISTS comparisons (
    kind VARCHAR, model VARCHAR, deployment_a VARCHAR, deployment_b VARCHAR, topic VARCHAR,
    topic_group VARCHAR, language_a VARCHAR, language_b VARCHAR, week_a VARCHAR, week_b VARCHAR,
    n_prompts_a BIGINT, n_prompts_b BIGINT, rate_a DOUBLE, rate_b DOUBLE, n_eff_a DOUBLE,
    n_eff_b DOUBLE, diff DOUBLE, diff_ci_low DOUBLE, diff_ci_high DOUBLE, test VARCHAR, z DOUBLE,
    df DOUBLE, p_value DOUBLE, family_size BIGINT, q_value DOUBLE, significant BOOLEAN
);
DELETE FROM comparisons WHERE list_contains($weeks, week_a);
INSERT INTO comparisons BY NAME
WITH rates AS (
    SELECT * FROM refusal_rates WHERE refusal_rate IS NOT NULL
),
previous AS (
    SELECT model, deployment, topic, language, week, lag(week) OVER w AS prev_week
    FROM rates
    WINDOW w AS (PARTITION BY model, deployment, topic, language ORDER BY week)
),
this_week AS (
    SELECT * FROM previous WHERE list_contains($weeks, week)
),
-- the prompts (runs of a week summed, see prompt_weeks.sql) of the weeks compared
per_prompt AS (
    SELECT model, deployment, week, prompt_id, topic, topic_group, language, n_valid, n_refused
    FROM prompt_weeks
    WHERE n_valid > 0
      AND (list_contains($weeks, week) OR week IN (SELECT prev_week FROM this_week))
),
-- this week's prompts, each with the week its cell is compared with
current AS MATERIALIZED (
    SELECT a.*, v.prev_week
    FROM per_prompt AS a
    JOIN this_week AS v USING (model, deployment, topic, language, week)
    WHERE v.prev_week IS NOT NULL
),
-- prompts asked on both sides of a same-prompt comparison, one row per prompt
shared AS (
    SELECT 'week' AS kind, a.model, a.deployment AS deployment_a, a.deployment AS deployment_b,
           a.topic, a.topic_group, a.language, a.week AS week_a, b.week AS week_b, a.prompt_id,
           a.n_valid AS valid_a, a.n_refused AS refused_a, b.n_valid AS valid_b, b.n_refused AS refused_b
    FROM current AS a
    JOIN per_prompt AS b
      ON b.model = a.model AND b.deployment = a.deployment AND b.week = a.prev_week
     AND b.prompt_id = a.prompt_id
    UNION ALL
    SELECT 'deployment' AS kind, a.model, a.deployment, b.deployment, a.topic, a.topic_group,
           a.language, a.week, b.week, a.prompt_id, a.n_valid, a.n_refused, b.n_valid, b.n_refused
    FROM per_prompt AS a
    JOIN per_prompt AS b
      ON a.model = b.model AND a.week = b.week AND a.prompt_id = b.prompt_id
     AND a.deployment < b.deployment
    WHERE list_contains($weeks, a.week)
),
-- Cochran-Mantel-Haenszel over prompts: observed minus expected refusals of side a in each
-- prompt's 2×2 table, and the hypergeometric variance
stratified AS (
    SELECT kind, model, deployment_a, deployment_b, topic, any_value(topic_group) AS topic_group,
           language, week_a, week_b, count(*) AS n_prompts,
           sum(valid_a) AS valid_a, sum(refused_a) AS refused_a,
           sum(valid_b) AS valid_b, sum(refused_b) AS refused_b,
           sum(refused_a - valid_a * (refused_a + refused_b) / (valid_a + valid_b)) AS cmh_num,
           sum(CASE WHEN valid_a + valid_b > 1 THEN
                   valid_a * valid_b * (refused_a + refused_b) * (valid_a + valid_b - refused_a - refused_b)
                   / (power(valid_a + valid_b, 2) * (valid_a + valid_b - 1.0)) ELSE 0 END) AS cmh_var
    FROM shared
    GROUP BY kind, model, deployment_a, deployment_b, topic, language, week_a, week_b
),
same_prompts AS (
    SELECT kind, model, deployment_a, deployment_b, topic, topic_group,
           language AS language_a, language AS language_b, week_a, week_b,
           n_prompts AS n_prompts_a, n_prompts AS n_prompts_b,
           refused_a / valid_a AS rate_a, refused_b / valid_b AS rate_b,
           valid_a::DOUBLE AS n_eff_a, valid_b::DOUBLE AS n_eff_b,
           CASE WHEN cmh_var > 0 THEN cmh_num / sqrt(cmh_var) ELSE 0.0 END AS z,
           NULL::DOUBLE AS df,
           'cmh' AS test
    FROM stratified
),
languages AS (
    SELECT 'language' AS kind, a.model, a.deployment AS deployment_a, a.deployment AS deployment_b,
           a.topic, a.topic_group, a.language AS language_a, b.language AS language_b,
           a.week AS week_a, b.week AS week_b, a.n_prompts AS n_prompts_a, b.n_prompts AS n_prompts_b,
           a.refusal_rate AS rate_a, b.refusal_rate AS rate_b, a.n_eff AS n_eff_a, b.n_eff AS n_eff_b,
           diff_z(a.refusal_rate, a.n_eff, b.refusal_rate, b.n_eff) AS z,
           diff_df(a.n_eff, a.n_prompts, b.n_eff, b.n_prompts) AS df,
           'cluster_t' AS test
    FROM rates AS a
    JOIN rates AS b
      ON a.model = b.model AND a.deployment = b.deployment AND a.topic = b.topic
     AND a.week = b.week AND a.language < b.language
    WHERE list_contains($weeks, a.week)
),
pairs AS (
    SELECT * FROM same_prompts
    UNION ALL BY NAME SELECT * FROM languages
),
tested AS (
    SELECT *, rate_a - rate_b AS diff,
           diff_low(rate_a, wilson_low(rate_a, n_eff_a), wilson_high(rate_a, n_eff_a),
                    rate_b, wilson_low(rate_b, n_eff_b), wilson_high(rate_b, n_eff_b)) AS diff_ci_low,
           diff_high(rate_a, wilson_low(rate_a, n_eff_a), wilson_high(rate_a, n_eff_a),
                     rate_b, wilson_low(rate_b, n_eff_b), wilson_high(rate_b, n_eff_b)) AS diff_ci_high,
           CASE WHEN df IS NULL THEN p_two_sided(z) ELSE p_t(z, df) END AS p_value
    FROM pairs
),
numbered AS (
    SELECT *, row_number() OVER () AS id FROM tested
),
-- BH on a narrow projection (sorting whole rows is most of the cost otherwise); ties in p
-- get the same q whatever their order, so p alone orders the step-up
ranked AS (
    SELECT id, kind, week_a, p_value,
           count(*) OVER (PARTITION BY kind, week_a) AS m,
           row_number() OVER (PARTITION BY kind, week_a ORDER BY p_value DESC) AS from_top
    FROM numbered
),
bh AS (
    -- q_(i) = min over j >= i of p_(j) m / j, with rank j = m - from_top + 1
    SELECT id, m, least(1.0, min(p_value * m / (m - from_top + 1)) OVER (
                  PARTITION BY kind, week_a ORDER BY from_top
                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS q_value
    FROM ranked
),
adjusted AS (
    SELECT * FROM numbered JOIN bh USING (id)
)
SELECT kind, model, deployment_a, deployment_b, topic, topic_group, language_a, language_b,
       week_a, week_b, n_prompts_a, n_prompts_b, rate_a, rate_b, n_eff_a, n_eff_b,
       diff, diff_ci_low, diff_ci_high, test, z, df, p_value, m AS family_size, q_value,
       q_value < 0.05 AS significant
FROM adjusted;
