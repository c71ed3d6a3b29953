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

-- ------------------------------------------------------------------ cells: design effect
-- The smallest number of prompts for a cell to count as well measured (refusal_rates.
-- well_measured): rankings list cells below it apart. The one place to change it.
CREATE OR REPLACE MACRO min_prompts() AS 10;

-- Intra-prompt correlation of a model's cells by one-way ANOVA over prompts within cells,
-- pooled over the cells (sums over cells of: ssb = Σ m_g (p_g - p_c)², ssw = Σ m_g p_g (1 - p_g),
-- dfb = Σ (G_c - 1), dfw = Σ (N_c - G_c), m0s = Σ (N_c - Σ m_g² / N_c)); m0 = m0s / dfb is the
-- ANOVA's average cluster size. NULL when nothing is estimable (every cell at 0 or 1, or one
-- repetition per prompt).
CREATE OR REPLACE MACRO icc_anova(ssb, ssw, dfb, dfw, m0s) AS
    CASE
        WHEN dfb IS NULL OR dfb < 1 OR dfw IS NULL OR dfw < 1 THEN NULL
        WHEN ssb + ssw <= 1e-9 THEN NULL
        ELSE least(1.0, greatest(0.0,
            (ssb / dfb - ssw / dfw) / (ssb / dfb + (m0s / dfb - 1) * ssw / dfw)))
    END;

-- The pooled ICC shrunk toward icc_prior() with the weight of icc_prior_df() degrees of
-- freedom between prompts (a model with few informative cells leans on the prior; with no
-- estimate at all the prior is used), clamped to [0, 1].
CREATE OR REPLACE MACRO icc_prior() AS 0.5;
CREATE OR REPLACE MACRO icc_prior_df() AS 10.0;
CREATE OR REPLACE MACRO icc_shrunk(icc, dfb) AS
    least(1.0, greatest(0.0, CASE
        WHEN icc IS NULL THEN icc_prior()
        ELSE (icc * dfb + icc_prior() * icc_prior_df()) / (dfb + icc_prior_df())
    END));

-- Effective sample size of a cell of `trials` answers over prompts with Σ m_g² = s_mm:
-- trials / deff, deff = 1 + (k̄ - 1) ICC with k̄ = Σ m_g² / Σ m_g. It depends on the design
-- and the model's pooled ICC, never on the cell's own count, so the interval below is
-- monotone in the count.
CREATE OR REPLACE MACRO deff(s_mm, trials, icc) AS
    CASE WHEN trials > 0 THEN 1 + (s_mm / trials - 1) * coalesce(icc, 1.0) END;
CREATE OR REPLACE MACRO n_eff_design(s_mm, trials, icc) AS
    CASE WHEN trials > 0 THEN trials / deff(s_mm, trials, icc) END;

-- The cell interval: Agresti-Coull (the "add z²/2 successes and failures" interval) on the
-- effective sample size n, with the normal quantile replaced by Student's t on the design's
-- degrees of freedom when prompts are few (small-cluster correction, see cell_quantile).
-- Agresti-Coull rather than Wilson: at small p and n (p = 0.05, n = 20) Wilson's lower
-- bound is too high and covers 92%. Monotone (non-decreasing) in p for a fixed n.
CREATE OR REPLACE MACRO ac_low(p, n, q) AS
    CASE WHEN p IS NOT NULL AND n > 0 THEN greatest(0.0,
        (p * n + q * q / 2) / (n + q * q)
        - q * sqrt(((p * n + q * q / 2) / (n + q * q)) * (1 - (p * n + q * q / 2) / (n + q * q)) / (n + q * q))) END;
CREATE OR REPLACE MACRO ac_high(p, n, q) AS
    CASE WHEN p IS NOT NULL AND n > 0 THEN least(1.0,
        (p * n + q * q / 2) / (n + q * q)
        + q * sqrt(((p * n + q * q / 2) / (n + q * q)) * (1 - (p * n + q * q / 2) / (n + q * q)) / (n + q * q))) END;

-- 97.5% quantile of Student's t with df degrees of freedom: a Cornish-Fisher expansion
-- (within 0.2% of the exact quantile from df 3 on), log-linear between the exact values at
-- df 1, 2 and 3 below that, 12.706 under 1; z95() for infinite df.
CREATE OR REPLACE MACRO t975(df) AS
    CASE
        WHEN df IS NULL OR df > 1e6 THEN z95()
        WHEN df <= 1 THEN 12.706204736
        WHEN df <= 2 THEN exp(ln(12.706204736) + (df - 1) * (ln(4.302652730) - ln(12.706204736)))
        WHEN df <= 3 THEN exp(ln(4.302652730) + (df - 2) * (ln(3.182446305) - ln(4.302652730)))
        ELSE z95() + (power(z95(), 3) + z95()) / (4 * df)
             + (5 * power(z95(), 5) + 16 * power(z95(), 3) + 3 * z95()) / (96 * df * df)
             + (3 * power(z95(), 7) + 19 * power(z95(), 5) + 17 * power(z95(), 3) - 15 * z95()) / (384 * power(df, 3))
    END;

-- The quantile of a cell interval: Student's t on n_eff - 1 degrees of freedom (the design's
-- effective number of independent answers; with ICC 1 that is prompts - 1, the cluster
-- count's), a small-sample correction that vanishes as n_eff grows.
CREATE OR REPLACE MACRO cell_quantile(n_eff) AS t975(n_eff - 1);

-- --------------------------------------------------------- classifier error (Rogan-Gladen)
-- The true rate behind an observed rate p of a classifier with sensitivity se and
-- specificity sp (for the positive class): (p + sp - 1) / (se + sp - 1), clamped to [0, 1];
-- NULL when the classifier is no better than chance (se + sp <= 1).
CREATE OR REPLACE MACRO rogan_gladen(p, se, sp) AS
    CASE WHEN p IS NULL OR se IS NULL OR sp IS NULL OR se + sp - 1 <= 0 THEN NULL
         ELSE least(1.0, greatest(0.0, (p + sp - 1) / (se + sp - 1))) END;

-- Variance of a proportion x / n measured on a labelled set, Agresti-Coull style (z²/2
-- added to both sides, so a perfect score on few labels is not a certainty).
CREATE OR REPLACE MACRO prop_var(x, n) AS
    CASE WHEN n IS NULL OR n <= 0 THEN NULL ELSE
        ((x + z95() * z95() / 2) / (n + z95() * z95())) * (1 - (x + z95() * z95() / 2) / (n + z95() * z95()))
        / (n + z95() * z95()) END;

-- Interval ends of a corrected rate: the cell's interval ends (lo, hi) pushed through the
-- correction (monotone), then widened in quadrature by the confusion's own uncertainty at
-- the corrected rate pi (delta method: (pi² var_se + (1 - pi)² var_sp) / (se + sp - 1)²).
CREATE OR REPLACE MACRO corrected_low(pi, lo, se, sp, var_se, var_sp) AS
    CASE WHEN pi IS NULL OR lo IS NULL THEN NULL ELSE greatest(0.0,
        pi - sqrt(power(pi - rogan_gladen(lo, se, sp), 2)
                  + z95() * z95() * (pi * pi * var_se + (1 - pi) * (1 - pi) * var_sp) / power(se + sp - 1, 2))) END;
CREATE OR REPLACE MACRO corrected_high(pi, hi, se, sp, var_se, var_sp) AS
    CASE WHEN pi IS NULL OR hi IS NULL THEN NULL ELSE least(1.0,
        pi + sqrt(power(rogan_gladen(hi, se, sp) - pi, 2)
                  + z95() * z95() * (pi * pi * var_se + (1 - pi) * (1 - pi) * var_sp) / power(se + sp - 1, 2))) END;
