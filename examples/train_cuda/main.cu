// resbm-train-cuda: the GPU loop of `resbm-train --device cuda` (train_cuda.cu) as its own
// program, for machines and scripts that build only the CUDA examples. Byte tokenizer by
// default here, as the benchmarks against PyTorch use it.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int resbm_train_cuda(int argc, char** argv);

int main(int argc, char** argv) {
  // Keep the old default vocabulary (bytes) unless the caller picks one.
  std::vector<char*> args(argv, argv + argc);
  bool has_tokenizer = false;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--tokenizer", 0) == 0) has_tokenizer = true;
  static char flag[] = "--tokenizer=byte";
  if (!has_tokenizer) args.insert(args.begin() + 1, flag);
  try {
    return resbm_train_cuda(int(args.size()), args.data());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resbm-train-cuda: error: %s\n", e.what());
    return 1;
  }
}
