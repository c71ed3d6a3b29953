-- compare_models: two models (model_a < model_b) of one study in one deployment, on the
-- prompts both answered that week (same prompt_id), per topic × language, for each metric
-- ('refusal', 'non_answer'); e.g. R1 against R1-1776 on the same catalog prompts.
-- diff = rate_a - rate_b; q_value is Benjamini-Hochberg over every model test of that
-- metric and week; significant = q_value < 0.05 (see comparisons.sql for the test).
CREATE OR REPLACE VIEW compare_models AS
SELECT study, metric, model AS model_a, model_b, deployment_a AS deployment, topic, topic_group,
       language_a AS language, week_a AS week, n_prompts_a AS n_shared_prompts, rate_a, rate_b,
       diff, diff_ci_low, diff_ci_high, test, z, df, p_value, family_size, q_value, significant
FROM comparisons
WHERE kind = 'model';
