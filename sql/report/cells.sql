-- report/cells: every cell of the week (study × model × deployment × topic × language), the
-- heat maps and report.json; bounded by $limit. Non-answer = refused + evasive + blocked.
SELECT study, model, deployment, topic, topic_group, language, n_prompts, n_samples, n_valid,
       n_refused, n_evasive, n_blocked, n_non_answer, n_error, n_truncated,
       non_answer_rate, non_answer_ci_low, non_answer_ci_high,
       refusal_rate, ci_low, ci_high,
       evasive_rate, evasive_ci_low, evasive_ci_high, blocked_rate, truncated_rate,
       error_rate, language_mismatch_rate, flip_rate, non_answer_flip_rate, between_prompt_share,
       well_measured, classifier_version, confusion_version, confusion_language,
       corrected_non_answer_rate, corrected_non_answer_ci_low, corrected_non_answer_ci_high,
       corrected_refusal_rate, corrected_refusal_ci_low, corrected_refusal_ci_high
FROM refusal_rates
WHERE week = $week
ORDER BY study, deployment, model, topic_group, topic, language
LIMIT $limit
