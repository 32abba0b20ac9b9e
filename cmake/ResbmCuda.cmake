# The CUDA backend: nvcc for Hopper by default, the CUDA runtime, cuBLASLt and NCCL.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90a)
endif()
if(NOT CMAKE_CUDA_COMPILER)
  set(CMAKE_CUDA_COMPILER ${RESBM_NVCC})
endif()
enable_language(CUDA)
# CMake 3.25 does not know nvcc's C++20 flag yet (it does from 3.26 on): teach it.
if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION OR CMAKE_CUDA20_STANDARD_COMPILE_OPTION STREQUAL "")
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
endif()
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
# The TMA attention kernels get cuTensorMapEncodeTiled through cudaGetDriverEntryPointByVersion
# (CUDA 12.5), so that nothing links the driver library.
if(CUDAToolkit_VERSION VERSION_LESS 12.5)
  message(FATAL_ERROR "resbm's CUDA backend needs the CUDA Toolkit 12.5 or newer (found ${CUDAToolkit_VERSION}). "
                      "Install a newer toolkit, or configure with -DRESBM_CUDA=OFF for the CPU backend alone.")
endif()
find_path(RESBM_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} REQUIRED)
find_library(RESBM_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib REQUIRED)

add_library(resbm_cuda INTERFACE)
add_library(resbm::cuda ALIAS resbm_cuda)
target_link_libraries(resbm_cuda INTERFACE resbm CUDA::cudart CUDA::cublasLt ${RESBM_NCCL_LIBRARY})
target_include_directories(resbm_cuda INTERFACE ${RESBM_NCCL_INCLUDE_DIR})
target_compile_options(resbm_cuda INTERFACE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-fopenmp>)

# One executable per <dir>/test_*.cu, linked to resbm::cuda and the Catch2 main of
# tests/CMakeLists.txt (so call it after resbm_test_main exists: tests/cuda.cmake does).
# ctest label "cuda"; a test binary exits 77 ("no CUDA device: skipped") where there is no
# GPU, which ctest reports as skipped, so CI without a GPU still compiles every .cu.
function(resbm_add_cuda_tests dir)
  file(GLOB _srcs CONFIGURE_DEPENDS ${dir}/test_*.cu)
  foreach(src IN LISTS _srcs)
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_link_libraries(${name} PRIVATE resbm::cuda resbm_test_main)
    target_compile_definitions(${name} PRIVATE
      RESBM_SOURCE_DIR="${PROJECT_SOURCE_DIR}" RESBM_BINARY_DIR="${PROJECT_BINARY_DIR}")
    target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
    add_test(NAME ${name} COMMAND ${name})
    set_tests_properties(${name} PROPERTIES LABELS cuda SKIP_RETURN_CODE 77 TIMEOUT 900)
  endforeach()
endfunction()

# The CUDA kernel benchmarks (benchmarks/cuda/bench_*.cu): plain executables, CUDA events.
if(RESBM_BUILD_TESTS OR RESBM_BUILD_BENCHMARKS)
  file(GLOB _resbm_cuda_benches CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/benchmarks/cuda/bench_*.cu)
  foreach(src IN LISTS _resbm_cuda_benches)
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name}_cuda ${src})
    target_link_libraries(${name}_cuda PRIVATE resbm::cuda)
    target_compile_options(${name}_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
  endforeach()
endif()
