-- report/examples: what the notable cells said, one response per label (refused, evasive,
-- blocked, complied) of each cell in $study/$model/$deployment/$topic/$language (parallel
-- lists), picked by a hash of its key (stable from one report to the next); text cut in SQL.
WITH wanted AS (
    SELECT unnest($study::VARCHAR[]) AS study, unnest($model::VARCHAR[]) AS model,
           unnest($deployment::VARCHAR[]) AS deployment, unnest($topic::VARCHAR[]) AS topic,
           unnest($language::VARCHAR[]) AS language
),
ranked AS (
    SELECT r.study, s.model, s.deployment, s.topic, s.language, l.label, l.rule, l.response_language,
           l.language_match, coalesce(l.truncated, false) AS truncated,
           left(s.response_text, $example_chars) AS response_text, length(s.response_text) AS response_chars,
           left(s.error, $example_chars) AS error,
           left(p.prompt_text, $prompt_chars) AS prompt_text, length(p.prompt_text) AS prompt_chars,
           row_number() OVER (PARTITION BY r.study, s.model, s.deployment, s.topic, s.language, l.label
                              ORDER BY hash(s.run_id, s.prompt_id, s.rep)) AS k
    FROM samples AS s
    JOIN runs AS r ON r.run_id = s.run_id
    JOIN wanted AS w ON w.study = r.study AND w.model = s.model AND w.deployment = s.deployment
                    AND w.topic = s.topic AND w.language = s.language
    JOIN labels AS l ON l.run_id = s.run_id AND l.model = s.model AND l.deployment = s.deployment
                    AND l.prompt_id = s.prompt_id AND l.rep = s.rep
    JOIN prompts AS p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
    WHERE r.week = $week AND l.label IN ('refused', 'evasive', 'blocked', 'complied')
)
SELECT * EXCLUDE (k) FROM ranked WHERE k = 1
