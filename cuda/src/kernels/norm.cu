// Batch norm over x: [n, c, hw] per channel (one thread per channel) and layer norm
// over rows of width d (one thread per row; parameter gradients one thread per column).

CIM_KERNEL cim_batch_norm_train(const float* x, const float* gamma, const float* beta, float* running_mean,
                                float* running_var, float* y, float* save_mean, float* save_invstd, long long n,
                                long long c, long long hw, double eps, double momentum) {
    CIM_LOOP(ci, c) {
        long long count = n * hw;
        if (count == 0) {
            save_mean[ci] = 0.0f;
            save_invstd[ci] = (float)(1.0 / sqrt(eps));
            continue;
        }
        double cnt = (double)count;
        double sum = 0.0;
        for (long long ni = 0; ni < n; ++ni)
            for (long long s = 0; s < hw; ++s) sum += (double)x[(ni * c + ci) * hw + s];
        double mean = sum / cnt;
        double sq = 0.0;
        for (long long ni = 0; ni < n; ++ni)
            for (long long s = 0; s < hw; ++s) {
                double dv = (double)x[(ni * c + ci) * hw + s] - mean;
                sq += dv * dv;
            }
        double var = sq / cnt;
        double invstd = 1.0 / sqrt(var + eps);
        double g = (double)gamma[ci], b = (double)beta[ci];
        for (long long ni = 0; ni < n; ++ni)
            for (long long s = 0; s < hw; ++s) {
                long long i = (ni * c + ci) * hw + s;
                y[i] = (float)(((double)x[i] - mean) * invstd * g + b);
            }
        double unbiased = count > 1 ? sq / (cnt - 1.0) : var;
        running_mean[ci] = (float)((1.0 - momentum) * (double)running_mean[ci] + momentum * mean);
        running_var[ci] = (float)((1.0 - momentum) * (double)running_var[ci] + momentum * unbiased);
        save_mean[ci] = (float)mean;
        save_invstd[ci] = (float)invstd;
    }
}

CIM_KERNEL cim_batch_norm_eval(const float* x, const float* gamma, const float* beta, const float* running_mean,
                               const float* running_var, float* y, long long total, long long c, long long hw,
                               double eps) {
    CIM_LOOP(i, total) {
        long long ci = (i / hw) % c;
        double mean = (double)running_mean[ci];
        double invstd = 1.0 / sqrt((double)running_var[ci] + eps);
        y[i] = (float)(((double)x[i] - mean) * invstd * (double)gamma[ci] + (double)beta[ci]);
    }
}

CIM_KERNEL cim_batch_norm_backward(const float* x, const float* dy, const float* gamma, const float* save_mean,
                                   const float* save_invstd, float* dx, float* dgamma, float* dbeta, long long n,
                                   long long c, long long hw) {
    CIM_LOOP(ci, c) {
        long long count = n * hw;
        double mean = (double)save_mean[ci];
        double invstd = (double)save_invstd[ci];
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (long long ni = 0; ni < n; ++ni)
            for (long long s = 0; s < hw; ++s) {
                long long i = (ni * c + ci) * hw + s;
                double g = (double)dy[i];
                sum_dy += g;
                sum_dy_xhat += g * ((double)x[i] - mean) * invstd;
            }
        if (count > 0) {
            double cnt = (double)count;
            double k = (double)gamma[ci] * invstd / cnt;
            for (long long ni = 0; ni < n; ++ni)
                for (long long s = 0; s < hw; ++s) {
                    long long i = (ni * c + ci) * hw + s;
                    double xhat = ((double)x[i] - mean) * invstd;
                    dx[i] = (float)(k * (cnt * (double)dy[i] - sum_dy - xhat * sum_dy_xhat));
                }
        }
        dgamma[ci] = (float)((double)dgamma[ci] + sum_dy_xhat);
        dbeta[ci] = (float)((double)dbeta[ci] + sum_dy);
    }
}

CIM_KERNEL cim_layer_norm(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                          long long rows, long long d, double eps) {
    CIM_LOOP(r, rows) {
        const float* xr = x + r * d;
        double mu = 0.0, var = 0.0;
        if (d > 0) {
            double s = 0.0;
            for (long long j = 0; j < d; ++j) s += (double)xr[j];
            mu = s / (double)d;
            double sq = 0.0;
            for (long long j = 0; j < d; ++j) {
                double cv = (double)xr[j] - mu;
                sq += cv * cv;
            }
            var = sq / (double)d;
        }
        double rs = 1.0 / sqrt(var + eps);
        for (long long j = 0; j < d; ++j) {
            double xhat = ((double)xr[j] - mu) * rs;
            y[r * d + j] = (float)(xhat * (double)gamma[j] + (double)beta[j]);
        }
        mean[r] = (float)mu;
        rstd[r] = (float)rs;
    }
}

CIM_KERNEL cim_layer_norm_backward_dx(const float* x, const float* dy, const float* gamma, const float* mean,
                                      const float* rstd, float* dx, long long rows, long long d) {
    CIM_LOOP(r, rows) {
        if (d == 0) continue;
        double mu = (double)mean[r], rs = (double)rstd[r];
        double sum_g = 0.0, sum_g_xhat = 0.0;
        for (long long j = 0; j < d; ++j) {
            long long i = r * d + j;
            double xhat = ((double)x[i] - mu) * rs;
            double g = (double)dy[i] * (double)gamma[j];
            sum_g += g;
            sum_g_xhat += g * xhat;
        }
        double mean_g = sum_g / (double)d, mean_g_xhat = sum_g_xhat / (double)d;
        for (long long j = 0; j < d; ++j) {
            long long i = r * d + j;
            double xhat = ((double)x[i] - mu) * rs;
            double g = (double)dy[i] * (double)gamma[j];
            dx[i] = (float)(rs * (g - mean_g - xhat * mean_g_xhat));
        }
    }
}

CIM_KERNEL cim_layer_norm_backward_params(const float* x, const float* dy, const float* mean, const float* rstd,
                                          float* dgamma, float* dbeta, long long rows, long long d) {
    CIM_LOOP(j, d) {
        double ag = 0.0, ab = 0.0;
        for (long long r = 0; r < rows; ++r) {
            long long i = r * d + j;
            double xhat = ((double)x[i] - (double)mean[r]) * (double)rstd[r];
            ag += (double)dy[i] * xhat;
            ab += (double)dy[i];
        }
        dgamma[j] = (float)((double)dgamma[j] + ag);
        dbeta[j] = (float)((double)dbeta[j] + ab);
    }
}
