"""TRI (teleological reasoning infilling), plain Python: step-verified traces (`traces`) and the
(Q, P, S, M) quadruples cut from them (`quadruples`); the PSM layout is the LM toolkit's
(`workloads.lm.infilling`)."""
