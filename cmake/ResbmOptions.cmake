include(GNUInstallDirs)
option(RESBM_BUILD_TESTS "Build the Catch2 tests" ${PROJECT_IS_TOP_LEVEL})
option(RESBM_BUILD_EXAMPLES "Build the examples (resbm-train, ...)" ${PROJECT_IS_TOP_LEVEL})
option(RESBM_BUILD_BENCHMARKS "Build the Google Benchmark binaries" ${PROJECT_IS_TOP_LEVEL})
option(RESBM_SANITIZE "Build our targets with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)

# CUDA is ON whenever nvcc can be found (PATH, CUDACXX, or /usr/local/cuda).
find_program(RESBM_NVCC nvcc HINTS ENV CUDACXX PATHS /usr/local/cuda/bin)
if(RESBM_NVCC)
  set(_resbm_cuda_default ON)
else()
  set(_resbm_cuda_default OFF)
endif()
option(RESBM_CUDA "Build the CUDA backend, its tests and benchmarks" ${_resbm_cuda_default})

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()
