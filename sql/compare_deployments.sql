-- compare_deployments: one model in two deployments (deployment_a < deployment_b) of one
-- study, on the prompts both deployments answered that week, per topic × language, for each
-- metric ('refusal', 'non_answer'). diff = rate_a - rate_b; q_value is Benjamini-Hochberg
-- over every deployment test of that metric and week; significant = q_value < 0.05
-- (see comparisons.sql for the test).
CREATE OR REPLACE VIEW compare_deployments AS
SELECT study, metric, model, topic, topic_group, language_a AS language, week_a AS week,
       deployment_a, deployment_b, n_prompts_a AS n_shared_prompts, rate_a, rate_b, diff,
       diff_ci_low, diff_ci_high, test, z, df, p_value, family_size, q_value, significant
FROM comparisons
WHERE kind = 'deployment';
