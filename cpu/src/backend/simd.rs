//! Run-time selection of AVX2 + FMA code for the transcendental-heavy loops.

/// Compile a slice kernel twice, for the baseline target and for AVX2 + FMA, and pick
/// one at run time. `$base` should be `#[inline(always)]` so that it is compiled
/// inside the AVX2 function rather than called from it.
macro_rules! dispatch {
    ($name:ident, $base:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $base($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $base($($arg),*)
        }
    };
}
