-- refusal_rates: study × model × deployment × topic × language × week, from prompt_weeks
-- (one row per prompt and week), rebuilt for the weeks in $weeks only: a new run never
-- rescans old samples, nor the marts of other weeks. Two studies are never pooled.
--
-- Metrics, each over the valid samples (errors excluded; error_rate is over all samples):
--   refusal     refused
--   non_answer  refused + evasive + blocked (blocked: a provider's block, content filter)
--   evasive, blocked on their own; truncated_rate: valid samples cut by max_tokens.
--
-- Intervals respect clustering: repetitions of one prompt are correlated. For a fixed
-- design the interval must be monotone in the count, so the variance inflation does not
-- come from the cell's own spread (which is 0 at a count of 0): it is a design effect
-- deff = 1 + (k̄ - 1) ICC, k̄ = Σ m_g² / Σ m_g, with the ICC estimated by one-way ANOVA over
-- prompts within cells, pooled over the model's other informative cells in that study and
-- week (per metric; leave-one-out, so n_eff is free of the cell's own count), shrunk toward
-- a prior (macros icc_anova, icc_shrunk). n_eff = n / deff
-- enters an Agresti-Coull interval with Student's t on n_eff - 1 degrees of freedom in
-- place of z (cell_quantile: a small-sample correction, prompts - 1 df when ICC = 1).
-- cluster_se is the cluster-robust (CR1) standard error of the refusal rate, for reference.
--
-- Corrected rates: the classifier's confusion matrix (classifier_confusion, measured on
-- labelled data) for the cell's language (else its 'all' row) and classifier version (else
-- the newest loaded), reduced to binary sensitivity and specificity (refused vs the other
-- valid labels; non-answer vs complied), corrects the rate by Rogan-Gladen, clamped to
-- [0, 1]; its interval is the cell interval pushed through the correction and widened by
-- the confusion's own binomial uncertainty (macros corrected_low/high). NULL without a matrix.
--
-- well_measured: n_prompts >= min_prompts() (macros.sql): rank these above the others.
CREATE TABLE IF NOT EXISTS refusal_rates (
    study VARCHAR, model VARCHAR, deployment VARCHAR, topic VARCHAR, topic_group VARCHAR, language VARCHAR,
    week VARCHAR, n_prompts BIGINT, n_samples BIGINT, n_valid BIGINT, n_refused BIGINT,
    n_evasive BIGINT, n_blocked BIGINT, n_non_answer BIGINT, n_error BIGINT, n_truncated BIGINT,
    refusal_rate DOUBLE, ci_low DOUBLE, ci_high DOUBLE, cluster_se DOUBLE, n_eff DOUBLE,
    icc DOUBLE, deff DOUBLE,
    non_answer_rate DOUBLE, non_answer_ci_low DOUBLE, non_answer_ci_high DOUBLE,
    non_answer_n_eff DOUBLE, non_answer_icc DOUBLE, non_answer_deff DOUBLE,
    evasive_rate DOUBLE, evasive_ci_low DOUBLE, evasive_ci_high DOUBLE,
    blocked_rate DOUBLE, truncated_rate DOUBLE,
    error_rate DOUBLE, language_mismatch_rate DOUBLE, flip_rate DOUBLE, non_answer_flip_rate DOUBLE,
    between_prompt_share DOUBLE, well_measured BOOLEAN,
    classifier_version VARCHAR, confusion_version VARCHAR, confusion_language VARCHAR,
    corrected_refusal_rate DOUBLE, corrected_refusal_ci_low DOUBLE, corrected_refusal_ci_high DOUBLE,
    corrected_non_answer_rate DOUBLE, corrected_non_answer_ci_low DOUBLE, corrected_non_answer_ci_high DOUBLE
);
DELETE FROM refusal_rates WHERE list_contains($weeks, week);
INSERT INTO refusal_rates BY NAME
WITH per_prompt AS (
    SELECT *, n_refused / nullif(n_valid, 0) AS p_refused,
           n_non_answer / nullif(n_valid, 0) AS p_non_answer,
           -- Σ y_g² / m_g per metric, for the ANOVA sums of squares
           n_refused::DOUBLE * n_refused / nullif(n_valid, 0) AS r2m,
           n_non_answer::DOUBLE * n_non_answer / nullif(n_valid, 0) AS a2m,
           n_evasive::DOUBLE * n_evasive / nullif(n_valid, 0) AS e2m
    FROM prompt_weeks
    WHERE list_contains($weeks, week)
),
-- every cell, including one whose every sample failed (rates null, error_rate 1)
cells AS (
    SELECT study, model, deployment, topic, any_value(topic_group) AS topic_group, language, week,
           count(*) FILTER (WHERE n_valid > 0) AS n_prompts,
           sum(n_samples) AS n_samples,
           sum(n_valid) AS n_valid,
           sum(n_refused) AS n_refused,
           sum(n_evasive) AS n_evasive,
           sum(n_blocked) AS n_blocked,
           sum(n_non_answer) AS n_non_answer,
           sum(n_error) AS n_error,
           sum(n_truncated) AS n_truncated,
           sum(n_answers_lang_known) AS n_answers_lang_known,
           sum(n_language_mismatch) AS n_language_mismatch,
           avg(CASE WHEN p_refused > 0 AND p_refused < 1 THEN 1.0 ELSE 0.0 END)
               FILTER (WHERE n_valid > 0) AS flip_rate,
           avg(CASE WHEN p_non_answer > 0 AND p_non_answer < 1 THEN 1.0 ELSE 0.0 END)
               FILTER (WHERE n_valid > 0) AS non_answer_flip_rate,
           var_pop(p_refused) AS var_between,
           avg(p_refused * (1 - p_refused)) AS var_within,
           sum(n_refused::DOUBLE * n_refused) AS s_rr,
           sum(n_refused::DOUBLE * n_valid) AS s_rm,
           sum(n_valid::DOUBLE * n_valid) AS s_mm,
           sum(r2m) AS s_r2m, sum(a2m) AS s_a2m, sum(e2m) AS s_e2m,
           max(classifier_version) AS classifier_version
    FROM per_prompt
    GROUP BY study, model, deployment, topic, language, week
),
-- one-way ANOVA pieces of each cell, per metric (r refusal, a non-answer, e evasive); a
-- cell at 0 or 1 (or with one prompt, or one repetition per prompt) says nothing about the
-- correlation and is left out of the pooling (inf_* = 0)
anova AS (
    SELECT *,
           CASE WHEN n_prompts >= 2 AND n_valid > n_prompts AND n_refused > 0 AND n_refused < n_valid
                THEN 1 ELSE 0 END AS inf_r,
           CASE WHEN n_prompts >= 2 AND n_valid > n_prompts AND n_non_answer > 0 AND n_non_answer < n_valid
                THEN 1 ELSE 0 END AS inf_a,
           CASE WHEN n_prompts >= 2 AND n_valid > n_prompts AND n_evasive > 0 AND n_evasive < n_valid
                THEN 1 ELSE 0 END AS inf_e,
           coalesce(n_valid - s_mm / nullif(n_valid, 0), 0) AS m0s_c,
           n_prompts - 1 AS dfb_c,
           n_valid - n_prompts AS dfw_c,
           coalesce(s_r2m - n_refused::DOUBLE * n_refused / nullif(n_valid, 0), 0) AS ssb_r,
           coalesce(n_refused - s_r2m, 0) AS ssw_r,
           coalesce(s_a2m - n_non_answer::DOUBLE * n_non_answer / nullif(n_valid, 0), 0) AS ssb_a,
           coalesce(n_non_answer - s_a2m, 0) AS ssw_a,
           coalesce(s_e2m - n_evasive::DOUBLE * n_evasive / nullif(n_valid, 0), 0) AS ssb_e,
           coalesce(n_evasive - s_e2m, 0) AS ssw_e
    FROM cells
),
-- the model's sums over its informative cells (study × model × week)
pooled AS (
    SELECT study, model, week,
           sum(inf_r * ssb_r) AS t_ssb_r, sum(inf_r * ssw_r) AS t_ssw_r, sum(inf_r * dfb_c) AS t_dfb_r,
           sum(inf_r * dfw_c) AS t_dfw_r, sum(inf_r * m0s_c) AS t_m0s_r,
           sum(inf_a * ssb_a) AS t_ssb_a, sum(inf_a * ssw_a) AS t_ssw_a, sum(inf_a * dfb_c) AS t_dfb_a,
           sum(inf_a * dfw_c) AS t_dfw_a, sum(inf_a * m0s_c) AS t_m0s_a,
           sum(inf_e * ssb_e) AS t_ssb_e, sum(inf_e * ssw_e) AS t_ssw_e, sum(inf_e * dfb_c) AS t_dfb_e,
           sum(inf_e * dfw_c) AS t_dfw_e, sum(inf_e * m0s_c) AS t_m0s_e
    FROM anova
    GROUP BY study, model, week
),
-- each cell's ICC is pooled over the model's *other* cells (leave-one-out): the design
-- effect, hence n_eff, does not depend on the cell's own count at all
loo AS (
    SELECT a.*,
           icc_shrunk(icc_anova(t_ssb_r - inf_r * ssb_r, t_ssw_r - inf_r * ssw_r, t_dfb_r - inf_r * dfb_c,
                                t_dfw_r - inf_r * dfw_c, t_m0s_r - inf_r * m0s_c), t_dfb_r - inf_r * dfb_c) AS icc_r,
           icc_shrunk(icc_anova(t_ssb_a - inf_a * ssb_a, t_ssw_a - inf_a * ssw_a, t_dfb_a - inf_a * dfb_c,
                                t_dfw_a - inf_a * dfw_c, t_m0s_a - inf_a * m0s_c), t_dfb_a - inf_a * dfb_c) AS icc_a,
           icc_shrunk(icc_anova(t_ssb_e - inf_e * ssb_e, t_ssw_e - inf_e * ssw_e, t_dfb_e - inf_e * dfb_c,
                                t_dfw_e - inf_e * dfw_c, t_m0s_e - inf_e * m0s_c), t_dfb_e - inf_e * dfb_c) AS icc_e
    FROM anova AS a
    JOIN pooled AS p
      ON p.study IS NOT DISTINCT FROM a.study AND p.model = a.model AND p.week = a.week
),
designed AS (
    SELECT *,
           n_refused / nullif(n_valid, 0) AS refusal_rate,
           n_non_answer / nullif(n_valid, 0) AS non_answer_rate,
           n_evasive / nullif(n_valid, 0) AS evasive_rate,
           deff(s_mm, n_valid, icc_r) AS deff_r,
           deff(s_mm, n_valid, icc_a) AS deff_a,
           deff(s_mm, n_valid, icc_e) AS deff_e
    FROM loo
),
intervals AS (
    SELECT *,
           n_valid / deff_r AS n_eff_r, n_valid / deff_a AS n_eff_a, n_valid / deff_e AS n_eff_e,
           cell_quantile(n_valid / deff_r) AS q_r,
           cell_quantile(n_valid / deff_a) AS q_a,
           cell_quantile(n_valid / deff_e) AS q_e,
           CASE WHEN n_prompts > 1 THEN
               n_prompts / (n_prompts - 1.0)
               * greatest(0.0, s_rr - 2 * refusal_rate * s_rm + refusal_rate * refusal_rate * s_mm)
               / (n_valid::DOUBLE * n_valid)
           END AS se2
    FROM designed
),
bounded AS (
    SELECT *,
           ac_low(refusal_rate, n_eff_r, q_r) AS ci_low, ac_high(refusal_rate, n_eff_r, q_r) AS ci_high,
           ac_low(non_answer_rate, n_eff_a, q_a) AS non_answer_ci_low,
           ac_high(non_answer_rate, n_eff_a, q_a) AS non_answer_ci_high,
           ac_low(evasive_rate, n_eff_e, q_e) AS evasive_ci_low,
           ac_high(evasive_rate, n_eff_e, q_e) AS evasive_ci_high
    FROM intervals
),
-- the classifier's binary sensitivity and specificity per version and language; gold or
-- predicted `error` rows are out (errors are outside every rate's denominator)
confusion AS (
    SELECT classifier_version, language,
           max(loaded_at) AS loaded_at,
           sum(n) FILTER (WHERE gold = 'refused') AS pos_r,
           sum(n) FILTER (WHERE gold = 'refused' AND predicted = 'refused') AS tp_r,
           sum(n) FILTER (WHERE gold <> 'refused') AS neg_r,
           sum(n) FILTER (WHERE gold <> 'refused' AND predicted <> 'refused') AS tn_r,
           sum(n) FILTER (WHERE gold IN ('refused', 'evasive', 'blocked')) AS pos_a,
           sum(n) FILTER (WHERE gold IN ('refused', 'evasive', 'blocked')
                           AND predicted IN ('refused', 'evasive', 'blocked')) AS tp_a,
           sum(n) FILTER (WHERE gold = 'complied') AS neg_a,
           sum(n) FILTER (WHERE gold = 'complied' AND predicted = 'complied') AS tn_a
    FROM classifier_confusion
    WHERE gold <> 'error' AND predicted <> 'error'
    GROUP BY classifier_version, language
),
newest AS (
    SELECT classifier_version FROM confusion
    ORDER BY loaded_at DESC NULLS LAST, classifier_version DESC LIMIT 1
),
matched AS (
    SELECT b.*,
           CASE WHEN b.classifier_version IN (SELECT classifier_version FROM confusion)
                THEN b.classifier_version ELSE (SELECT classifier_version FROM newest) END AS confusion_version
    FROM bounded AS b
),
with_confusion AS (
    SELECT m.*,
           coalesce(l.language, a.language) AS confusion_language,
           coalesce(l.tp_r, a.tp_r) / nullif(coalesce(l.pos_r, a.pos_r), 0) AS se_r,
           coalesce(l.tn_r, a.tn_r) / nullif(coalesce(l.neg_r, a.neg_r), 0) AS sp_r,
           prop_var(coalesce(l.tp_r, a.tp_r), coalesce(l.pos_r, a.pos_r)) AS var_se_r,
           prop_var(coalesce(l.tn_r, a.tn_r), coalesce(l.neg_r, a.neg_r)) AS var_sp_r,
           coalesce(l.tp_a, a.tp_a) / nullif(coalesce(l.pos_a, a.pos_a), 0) AS se_a,
           coalesce(l.tn_a, a.tn_a) / nullif(coalesce(l.neg_a, a.neg_a), 0) AS sp_a,
           prop_var(coalesce(l.tp_a, a.tp_a), coalesce(l.pos_a, a.pos_a)) AS var_se_a,
           prop_var(coalesce(l.tn_a, a.tn_a), coalesce(l.neg_a, a.neg_a)) AS var_sp_a
    FROM matched AS m
    LEFT JOIN confusion AS l ON l.classifier_version = m.confusion_version AND l.language = m.language
    LEFT JOIN confusion AS a ON a.classifier_version = m.confusion_version AND a.language = 'all'
),
corrected AS (
    SELECT *,
           rogan_gladen(refusal_rate, se_r, sp_r) AS corrected_refusal_rate,
           rogan_gladen(non_answer_rate, se_a, sp_a) AS corrected_non_answer_rate
    FROM with_confusion
)
SELECT study, model, deployment, topic, topic_group, language, week,
       n_prompts, n_samples, n_valid, n_refused, n_evasive, n_blocked, n_non_answer, n_error, n_truncated,
       refusal_rate, ci_low, ci_high, sqrt(se2) AS cluster_se, n_eff_r AS n_eff,
       icc_r AS icc, deff_r AS deff,
       non_answer_rate, non_answer_ci_low, non_answer_ci_high,
       n_eff_a AS non_answer_n_eff, icc_a AS non_answer_icc, deff_a AS non_answer_deff,
       evasive_rate, evasive_ci_low, evasive_ci_high,
       n_blocked / nullif(n_valid, 0) AS blocked_rate,
       n_truncated / nullif(n_valid, 0) AS truncated_rate,
       n_error / n_samples AS error_rate,
       CASE WHEN n_answers_lang_known > 0 THEN n_language_mismatch / n_answers_lang_known END
           AS language_mismatch_rate,
       flip_rate, non_answer_flip_rate,
       CASE WHEN var_between + var_within > 0 THEN var_between / (var_between + var_within) END
           AS between_prompt_share,
       coalesce(n_prompts >= min_prompts(), false) AS well_measured,
       classifier_version,
       CASE WHEN confusion_language IS NOT NULL THEN confusion_version END AS confusion_version,
       confusion_language,
       corrected_refusal_rate,
       corrected_low(corrected_refusal_rate, ci_low, se_r, sp_r, var_se_r, var_sp_r) AS corrected_refusal_ci_low,
       corrected_high(corrected_refusal_rate, ci_high, se_r, sp_r, var_se_r, var_sp_r) AS corrected_refusal_ci_high,
       corrected_non_answer_rate,
       corrected_low(corrected_non_answer_rate, non_answer_ci_low, se_a, sp_a, var_se_a, var_sp_a)
           AS corrected_non_answer_ci_low,
       corrected_high(corrected_non_answer_rate, non_answer_ci_high, se_a, sp_a, var_se_a, var_sp_a)
           AS corrected_non_answer_ci_high
FROM corrected;
