-- report/classifier_accuracy: how often the classifier is right, per version and language,
-- from its confusion matrices on labelled data (classifier_confusion), for the versions that
-- labelled this week's cells (all loaded versions if none of them did). accuracy = share of
-- labelled items whose predicted label is the gold one; the refusal and non-answer columns
-- are the binary sensitivity (gold positives found) and specificity (gold negatives kept)
-- that the corrected rates use (non-answer: refused, evasive or blocked vs complied).
WITH used AS (
    SELECT DISTINCT classifier_version FROM refusal_rates WHERE week = $week AND classifier_version IS NOT NULL
),
versions AS (
    SELECT DISTINCT c.classifier_version FROM classifier_confusion AS c
    WHERE c.classifier_version IN (SELECT classifier_version FROM used)
       OR NOT EXISTS (SELECT 1 FROM classifier_confusion WHERE classifier_version IN (SELECT classifier_version FROM used))
),
m AS (
    SELECT c.*, c.gold IN ('refused', 'evasive', 'blocked') AS gold_na,
           c.predicted IN ('refused', 'evasive', 'blocked') AS pred_na
    FROM classifier_confusion AS c JOIN versions USING (classifier_version)
    WHERE c.gold <> 'error' AND c.predicted <> 'error'
)
SELECT classifier_version, language, any_value(dataset) AS dataset, sum(n) AS n_items,
       sum(n) FILTER (WHERE gold = predicted) / nullif(sum(n), 0) AS accuracy,
       sum(n) FILTER (WHERE gold = 'refused' AND predicted = 'refused')
           / nullif(sum(n) FILTER (WHERE gold = 'refused'), 0) AS refusal_sensitivity,
       sum(n) FILTER (WHERE gold <> 'refused' AND predicted <> 'refused')
           / nullif(sum(n) FILTER (WHERE gold <> 'refused'), 0) AS refusal_specificity,
       sum(n) FILTER (WHERE gold_na AND pred_na) / nullif(sum(n) FILTER (WHERE gold_na), 0) AS non_answer_sensitivity,
       sum(n) FILTER (WHERE gold = 'complied' AND predicted = 'complied')
           / nullif(sum(n) FILTER (WHERE gold = 'complied'), 0) AS non_answer_specificity
FROM m
GROUP BY classifier_version, language
ORDER BY classifier_version, language = 'all' DESC, language
LIMIT $limit
