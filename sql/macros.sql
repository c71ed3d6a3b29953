-- macros: the statistics every mart shares, stored in the warehouse file so that ad hoc SQL
-- (`refusals sql`, or plain `duckdb data/warehouse.duckdb`) can use them too.

-- 95% normal quantile.
CREATE OR REPLACE MACRO z95() AS 1.959963984540054;

-- Wilson score interval for a proportion p observed over n (possibly effective, fractional)
-- trials; NULL when p or n is NULL, clipped to [0, 1].
CREATE OR REPLACE MACRO wilson_low(p, n) AS
    CASE WHEN p IS NOT NULL AND n > 0 THEN greatest(0.0,
        (p + z95() * z95() / (2 * n)
         - z95() * sqrt(p * (1 - p) / n + z95() * z95() / (4 * n * n)))
        / (1 + z95() * z95() / n)) END;
CREATE OR REPLACE MACRO wilson_high(p, n) AS
    CASE WHEN p IS NOT NULL AND n > 0 THEN least(1.0,
        (p + z95() * z95() / (2 * n)
         + z95() * sqrt(p * (1 - p) / n + z95() * z95() / (4 * n * n)))
        / (1 + z95() * z95() / n)) END;

-- Effective sample size of a clustered proportion: p(1-p) / se² from the cluster-robust
-- variance, bounded to [clusters, trials]. With one cluster or se = 0 (p is 0 or 1) it is
-- the number of clusters, the conservative end.
CREATE OR REPLACE MACRO n_eff(p, se2, clusters, trials) AS
    CASE
        WHEN p IS NULL THEN NULL
        -- (se² below 1e-12 is rounding of an exact zero: every prompt at the same rate)
        WHEN clusters < 2 OR se2 IS NULL OR se2 <= 1e-12 THEN clusters::DOUBLE
        ELSE greatest(clusters, least(trials, p * (1 - p) / se2))
    END;

-- erfc(x) for x >= 0, fractional error below 1.2e-7 (Numerical Recipes' erfcc, a Chebyshev
-- fit); DuckDB has no normal distribution function.
CREATE OR REPLACE MACRO erfc_pos(x) AS
    (1.0 / (1.0 + 0.5 * x)) * exp(-x * x - 1.26551223 + (1.0 / (1.0 + 0.5 * x)) * (1.00002368
    + (1.0 / (1.0 + 0.5 * x)) * (0.37409196 + (1.0 / (1.0 + 0.5 * x)) * (0.09678418
    + (1.0 / (1.0 + 0.5 * x)) * (-0.18628806 + (1.0 / (1.0 + 0.5 * x)) * (0.27886807
    + (1.0 / (1.0 + 0.5 * x)) * (-1.13520398 + (1.0 / (1.0 + 0.5 * x)) * (1.48851587
    + (1.0 / (1.0 + 0.5 * x)) * (-0.82215223 + (1.0 / (1.0 + 0.5 * x)) * 0.17087277)))))))));

-- Two-sided p-value of a standard normal statistic.
CREATE OR REPLACE MACRO p_two_sided(z) AS least(1.0, erfc_pos(abs(z) / sqrt(2.0)));

-- Difference of two clustered proportions a - b, each given as (rate, effective n):
-- a design-effect-adjusted two-proportion z statistic with the pooled rate under H0
-- (a Rao-Scott-style adjustment: effective counts in place of sample counts). 0 when both
-- sides are 0 or both are 1 (nothing to tell apart).
CREATE OR REPLACE MACRO diff_z(pa, na, pb, nb) AS
    CASE
        WHEN pa IS NULL OR pb IS NULL OR na IS NULL OR nb IS NULL OR na = 0 OR nb = 0 THEN NULL
        WHEN ((pa * na + pb * nb) / (na + nb)) * (1 - (pa * na + pb * nb) / (na + nb)) <= 0 THEN 0.0
        ELSE (pa - pb) / sqrt(((pa * na + pb * nb) / (na + nb)) * (1 - (pa * na + pb * nb) / (na + nb))
                              * (1.0 / na + 1.0 / nb))
    END;

-- Newcombe's hybrid score interval for a - b from the two sides' Wilson intervals
-- (la, ua) and (lb, ub).
CREATE OR REPLACE MACRO diff_low(pa, la, ua, pb, lb, ub) AS
    (pa - pb) - sqrt(power(pa - la, 2) + power(ub - pb, 2));
CREATE OR REPLACE MACRO diff_high(pa, la, ua, pb, lb, ub) AS
    (pa - pb) + sqrt(power(ua - pa, 2) + power(pb - lb, 2));

-- Degrees of freedom of that statistic (Welch-Satterthwaite, each side's variance estimated
-- from its ga or gb prompt clusters, ga - 1 and gb - 1 degrees of freedom, at least 1).
-- With few prompts a cluster-robust variance is noisy and a normal reference is liberal in
-- the tails (simulated: 2-5x the nominal rate at p < 0.01 with 10 prompts), so p-values use
-- a t reference.
CREATE OR REPLACE MACRO diff_df(na, ga, nb, gb) AS
    power(1.0 / na + 1.0 / nb, 2)
    / (power(1.0 / na, 2) / greatest(ga - 1, 1) + power(1.0 / nb, 2) / greatest(gb - 1, 1));

-- Two-sided p-value of a t statistic with df degrees of freedom, through Wallace's (1959)
-- normal approximation z = (8df + 1) / (8df + 3) * sqrt(df * ln(1 + t²/df)): for p above
-- 1e-4 never more than 1% below the exact t p-value, and up to 10% above it far in the tail
-- (15% at one degree of freedom), i.e. slightly conservative.
CREATE OR REPLACE MACRO p_t(t, df) AS
    CASE WHEN t IS NULL OR df IS NULL THEN NULL
         ELSE p_two_sided((8 * df + 1) / (8 * df + 3) * sqrt(df * ln(1 + t * t / df))) END;
