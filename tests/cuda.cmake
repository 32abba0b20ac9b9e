# The CUDA tests (tests/cuda/test_*.cu), when the CUDA backend is built: see
# resbm_add_cuda_tests in cmake/ResbmCuda.cmake. Included by tests/CMakeLists.txt after
# resbm_test_main is defined.
if(RESBM_CUDA)
  resbm_add_cuda_tests(${CMAKE_CURRENT_LIST_DIR}/cuda)
endif()
