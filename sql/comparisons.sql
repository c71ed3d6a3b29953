-- comparisons: every test the report and the compare_* views show, one row per pair of
-- cells, rebuilt from refusal_rates and prompt_stats (both small).
--
--   kind = 'week'        a cell this week against the same cell in the previous week with data
--   kind = 'language'    two languages of one model × deployment × topic × week (a < b)
--   kind = 'deployment'  one model in two deployments (a < b), on the prompts both answered,
--                        per topic × language × week
--
-- Each side is a clustered proportion with its effective sample size n_eff (see
-- refusal_rates.sql); the test is a design-effect-adjusted two-proportion z test
-- (macros diff_z, p_two_sided) and the interval of the difference is Newcombe's hybrid score
-- interval from the two sides' cluster-aware Wilson intervals. Unpaired: where the two sides
-- share prompts (weeks, deployments) the test is conservative.
--
-- False discoveries: q_value is the Benjamini-Hochberg adjusted p-value within one family,
-- a kind in a week (every model, deployment, topic and language compared that week);
-- `significant` is q_value < 0.05, so at most about 5% of flagged changes are expected
-- to be false.
CREATE OR REPLACE TABLE comparisons AS
WITH rates AS (
    SELECT * FROM refusal_rates WHERE refusal_rate IS NOT NULL
),
weeks AS (
    SELECT 'week' AS kind, model, deployment AS deployment_a, deployment AS deployment_b,
           topic, topic_group, language AS language_a, language AS language_b,
           week AS week_a, lag(week) OVER w AS week_b,
           n_prompts AS n_prompts_a, lag(n_prompts) OVER w AS n_prompts_b,
           refusal_rate AS rate_a, lag(refusal_rate) OVER w AS rate_b,
           n_eff AS n_eff_a, lag(n_eff) OVER w AS n_eff_b,
           ci_low AS low_a, ci_high AS high_a, lag(ci_low) OVER w AS low_b, lag(ci_high) OVER w AS high_b
    FROM rates
    WINDOW w AS (PARTITION BY model, deployment, topic, language ORDER BY week)
),
languages AS (
    SELECT 'language' AS kind, a.model, a.deployment AS deployment_a, a.deployment AS deployment_b,
           a.topic, a.topic_group, a.language AS language_a, b.language AS language_b,
           a.week AS week_a, b.week AS week_b, a.n_prompts AS n_prompts_a, b.n_prompts AS n_prompts_b,
           a.refusal_rate AS rate_a, b.refusal_rate AS rate_b, a.n_eff AS n_eff_a, b.n_eff AS n_eff_b,
           a.ci_low AS low_a, a.ci_high AS high_a, b.ci_low AS low_b, b.ci_high AS high_b
    FROM rates AS a
    JOIN rates AS b
      ON a.model = b.model AND a.deployment = b.deployment AND a.topic = b.topic
     AND a.week = b.week AND a.language < b.language
),
-- deployments: one row per prompt of a model × deployment × week (runs of a week summed),
-- kept where both deployments have answers to the prompt
per_prompt AS (
    SELECT model, deployment, week, prompt_id, any_value(topic) AS topic,
           any_value(topic_group) AS topic_group, any_value(language) AS language,
           sum(n_valid) AS n_valid, sum(n_refused) AS n_refused
    FROM prompt_stats
    GROUP BY model, deployment, week, prompt_id
    HAVING sum(n_valid) > 0
),
shared AS (
    SELECT a.model, a.week, a.topic, a.topic_group, a.language, a.prompt_id,
           a.deployment AS deployment_a, b.deployment AS deployment_b,
           a.n_valid AS valid_a, a.n_refused AS refused_a, b.n_valid AS valid_b, b.n_refused AS refused_b
    FROM per_prompt AS a
    JOIN per_prompt AS b
      ON a.model = b.model AND a.week = b.week AND a.prompt_id = b.prompt_id
     AND a.deployment < b.deployment
),
shared_cells AS (
    SELECT model, week, topic, any_value(topic_group) AS topic_group, language,
           deployment_a, deployment_b, count(*) AS n_prompts,
           sum(valid_a) AS valid_a, sum(refused_a) / sum(valid_a) AS rate_a,
           sum(valid_b) AS valid_b, sum(refused_b) / sum(valid_b) AS rate_b
    FROM shared
    GROUP BY model, week, topic, language, deployment_a, deployment_b
),
residuals AS (
    SELECT model, week, topic, language, deployment_a, deployment_b,
           sum(power(s.refused_a - c.rate_a * s.valid_a, 2)) AS ss_a,
           sum(power(s.refused_b - c.rate_b * s.valid_b, 2)) AS ss_b
    FROM shared_cells AS c
    JOIN shared AS s USING (model, week, topic, language, deployment_a, deployment_b)
    GROUP BY model, week, topic, language, deployment_a, deployment_b
),
shared_se AS (
    SELECT c.*,
           CASE WHEN c.n_prompts > 1 THEN c.n_prompts / (c.n_prompts - 1.0) * r.ss_a / power(c.valid_a, 2) END AS se2_a,
           CASE WHEN c.n_prompts > 1 THEN c.n_prompts / (c.n_prompts - 1.0) * r.ss_b / power(c.valid_b, 2) END AS se2_b
    FROM shared_cells AS c
    JOIN residuals AS r USING (model, week, topic, language, deployment_a, deployment_b)
),
shared_eff AS (
    SELECT *, n_eff(rate_a, se2_a, n_prompts, valid_a) AS n_eff_a,
              n_eff(rate_b, se2_b, n_prompts, valid_b) AS n_eff_b
    FROM shared_se
),
deployments AS (
    SELECT 'deployment' AS kind, model, deployment_a, deployment_b, topic, topic_group,
           language AS language_a, language AS language_b, week AS week_a, week AS week_b,
           n_prompts AS n_prompts_a, n_prompts AS n_prompts_b, rate_a, rate_b, n_eff_a, n_eff_b,
           wilson_low(rate_a, n_eff_a) AS low_a, wilson_high(rate_a, n_eff_a) AS high_a,
           wilson_low(rate_b, n_eff_b) AS low_b, wilson_high(rate_b, n_eff_b) AS high_b
    FROM shared_eff
),
pairs AS (
    SELECT * FROM weeks WHERE week_b IS NOT NULL
    UNION ALL BY NAME SELECT * FROM languages
    UNION ALL BY NAME SELECT * FROM deployments
),
tested AS (
    SELECT *, rate_a - rate_b AS diff,
           diff_low(rate_a, low_a, high_a, rate_b, low_b, high_b) AS diff_ci_low,
           diff_high(rate_a, low_a, high_a, rate_b, low_b, high_b) AS diff_ci_high,
           diff_z(rate_a, n_eff_a, rate_b, n_eff_b) AS z
    FROM pairs
),
ranked AS (
    SELECT *, p_two_sided(z) AS p_value,
           count(*) OVER (PARTITION BY kind, week_a) AS m,
           row_number() OVER (PARTITION BY kind, week_a
                              ORDER BY p_two_sided(z), model, deployment_a, deployment_b, topic,
                                       language_a, language_b, week_b) AS rank
    FROM tested
),
adjusted AS (
    -- BH step-up: q_(i) = min over j >= i of p_(j) m / j
    SELECT *, least(1.0, min(p_value * m / rank) OVER (
                  PARTITION BY kind, week_a ORDER BY rank DESC
                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS q_value
    FROM ranked
)
SELECT kind, model, deployment_a, deployment_b, topic, topic_group, language_a, language_b,
       week_a, week_b, n_prompts_a, n_prompts_b, rate_a, rate_b, n_eff_a, n_eff_b,
       diff, diff_ci_low, diff_ci_high, z, p_value, m AS family_size, q_value,
       q_value < 0.05 AS significant
FROM adjusted
ORDER BY kind, week_a, q_value, model, topic;
