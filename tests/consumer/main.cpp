// Uses the installed headers for something real: a parameter arena filled with Philox
// normals, its sum of squares computed by a loop and by OpenBLAS (cblas_sdot) over the
// flat array, in parallel over a Context.
#include <cmath>
#include <cstdio>
#include <vector>

#include "resbm/resbm.hpp"

int main() {
  using namespace resbm;
  try {
    ParamArena<float> arena;
    arena.add("embed.weight", {16, 32}, ParamKind::embedding);
    arena.add("blocks.0.attn.wq.weight", {16, 32}, ParamKind::matrix);
    arena.add("norm.gain", {56}, ParamKind::gain);
    arena.allocate();

    Context ctx(2);
    for (size_t i = 0; i < arena.infos().size(); ++i) {
      Tensor<float> p = arena.param(i);
      parallel_for(ctx, p.numel(), [&](int64_t j) { p[j] = Philox::normal(1234, i, uint64_t(j)); });
    }

    double loop = 0;
    for (size_t i = 0; i < arena.infos().size(); ++i)
      for (float x : arena.param(i)) loop += double(x) * x;
    // Padding between entries is zero, so the whole flat array gives the same sum.
    float blas = cblas_sdot(int(arena.size()), arena.params(), 1, arena.params(), 1);
    if (std::abs(blas - loop) > 1e-3 * loop) {
      std::printf("resbm consumer FAILED: loop %.6f vs cblas_sdot %.6f\n", loop, double(blas));
      return 1;
    }
    std::printf("resbm consumer OK: %zu parameters, %zu values, sum of squares %.4f\n",
                arena.infos().size(), arena.count(), loop);
    return 0;
  } catch (const Error& e) {
    std::printf("resbm consumer FAILED: %s\n", e.what());
    return 1;
  }
}
