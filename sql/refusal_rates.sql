-- refusal_rates: model × deployment × topic × language × week, from prompt_weeks (one row
-- per prompt and week), rebuilt for the weeks in $weeks only: a new run never rescans old
-- samples, nor the marts of other weeks.
--
-- The interval respects clustering: repetitions of one prompt are correlated, so the
-- variance of the ratio estimator p = Σ r_g / Σ m_g is the cluster-robust (CR1) one over
-- prompts g, se² = G/(G-1) Σ (r_g - p m_g)² / (Σ m_g)², computed in the same pass from
-- Σ r², Σ r m and Σ m². It enters a Wilson interval through the effective sample size
-- n_eff = p(1-p) / se², bounded to [number of prompts, number of samples]; when p is 0 or 1
-- (se = 0) n_eff is the number of prompts, the conservative end (macros in macros.sql).
CREATE TABLE IF NOT EXISTS refusal_rates (
    model VARCHAR, deployment VARCHAR, topic VARCHAR, topic_group VARCHAR, language VARCHAR,
    week VARCHAR, n_prompts BIGINT, n_samples BIGINT, n_valid BIGINT, n_refused BIGINT,
    refusal_rate DOUBLE, ci_low DOUBLE, ci_high DOUBLE, cluster_se DOUBLE, n_eff DOUBLE,
    evasive_rate DOUBLE, error_rate DOUBLE, language_mismatch_rate DOUBLE, flip_rate DOUBLE,
    between_prompt_share DOUBLE
);
DELETE FROM refusal_rates WHERE list_contains($weeks, week);
INSERT INTO refusal_rates BY NAME
WITH per_prompt AS (
    SELECT *, n_refused / nullif(n_valid, 0) AS p_refused
    FROM prompt_weeks
    WHERE list_contains($weeks, week)
),
-- every cell, including one whose every sample failed (rates null, error_rate 1)
cells AS (
    SELECT model, deployment, topic, any_value(topic_group) AS topic_group, language, week,
           count(*) FILTER (WHERE n_valid > 0) AS n_prompts,
           sum(n_samples) AS n_samples,
           sum(n_valid) AS n_valid,
           sum(n_refused) AS n_refused,
           sum(n_evasive) AS n_evasive,
           sum(n_error) AS n_error,
           sum(n_answers_lang_known) AS n_answers_lang_known,
           sum(n_language_mismatch) AS n_language_mismatch,
           avg(CASE WHEN p_refused > 0 AND p_refused < 1 THEN 1.0 ELSE 0.0 END)
               FILTER (WHERE n_valid > 0) AS flip_rate,
           var_pop(p_refused) AS var_between,
           avg(p_refused * (1 - p_refused)) AS var_within,
           sum(n_refused::DOUBLE * n_refused) AS s_rr,
           sum(n_refused::DOUBLE * n_valid) AS s_rm,
           sum(n_valid::DOUBLE * n_valid) AS s_mm
    FROM per_prompt
    GROUP BY model, deployment, topic, language, week
),
rated AS (
    SELECT *, n_refused / nullif(n_valid, 0) AS refusal_rate FROM cells
),
robust AS (
    SELECT *,
           CASE WHEN n_prompts > 1 THEN
               n_prompts / (n_prompts - 1.0)
               * greatest(0.0, s_rr - 2 * refusal_rate * s_rm + refusal_rate * refusal_rate * s_mm)
               / (n_valid::DOUBLE * n_valid)
           END AS se2
    FROM rated
),
final AS (
    SELECT *, n_eff(refusal_rate, se2, n_prompts, n_valid) AS n_eff FROM robust
)
SELECT model, deployment, topic, topic_group, language, week,
       n_prompts, n_samples, n_valid, n_refused,
       refusal_rate,
       wilson_low(refusal_rate, n_eff) AS ci_low,
       wilson_high(refusal_rate, n_eff) AS ci_high,
       sqrt(se2) AS cluster_se,
       n_eff,
       n_evasive / nullif(n_valid, 0) AS evasive_rate,
       n_error / n_samples AS error_rate,
       CASE WHEN n_answers_lang_known > 0 THEN n_language_mismatch / n_answers_lang_known END
           AS language_mismatch_rate,
       flip_rate,
       CASE WHEN var_between + var_within > 0 THEN var_between / (var_between + var_within) END
           AS between_prompt_share
FROM final;
