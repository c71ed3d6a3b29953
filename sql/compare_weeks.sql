-- compare_weeks: each cell (study × model × deployment × topic × language) this week
-- against the previous week of the same study in which it has data, on the prompts both
-- weeks asked (n_shared_prompts), for each metric ('refusal', 'non_answer').
-- diff = rate - prev_rate; q_value is Benjamini-Hochberg over every week-over-week test of
-- that metric and week; significant = q_value < 0.05 (see comparisons.sql for the test).
CREATE OR REPLACE VIEW compare_weeks AS
SELECT study, metric, model, deployment_a AS deployment, topic, topic_group, language_a AS language,
       week_a AS week, week_b AS prev_week, n_prompts_a AS n_shared_prompts,
       rate_a AS rate, rate_b AS prev_rate, diff, diff_ci_low, diff_ci_high, test, z, df, p_value,
       family_size, q_value, significant
FROM comparisons
WHERE kind = 'week';
