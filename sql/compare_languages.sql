-- compare_languages: two languages (language_a < language_b) of one study × model ×
-- deployment × topic × week, for each metric ('refusal', 'non_answer'). diff = rate_a -
-- rate_b; q_value is Benjamini-Hochberg over every language test of that metric and week;
-- significant = q_value < 0.05 (see comparisons.sql for the test).
CREATE OR REPLACE VIEW compare_languages AS
SELECT study, metric, model, deployment_a AS deployment, topic, topic_group, week_a AS week,
       language_a, language_b, n_prompts_a, n_prompts_b, rate_a, rate_b, diff, diff_ci_low,
       diff_ci_high, test, z, df, p_value, family_size, q_value, significant
FROM comparisons
WHERE kind = 'language';
