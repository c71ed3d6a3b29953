-- classifier_confusion: the classifier's confusion matrices measured on labelled data
-- (`refusals eval-classifier --json`), one row per classifier version × language (incl.
-- 'all') × gold label × predicted label. Loaded from pipeline/semantic/confusion.json when
-- it exists (warehouse.load_confusion); a version loaded again replaces its rows. Older
-- versions stay, so runs labelled by them keep their own matrix. refusal_rates reads it.
CREATE TABLE IF NOT EXISTS classifier_confusion (
    classifier_version VARCHAR, language VARCHAR, gold VARCHAR, predicted VARCHAR, n BIGINT,
    dataset VARCHAR, split VARCHAR, classifier VARCHAR, loaded_at TIMESTAMPTZ
);
DELETE FROM classifier_confusion WHERE classifier_version = $version;
INSERT INTO classifier_confusion BY NAME
SELECT classifier_version, language, gold, predicted, n, dataset, split, classifier, now() AS loaded_at
FROM confusion_rows;
