# install_consumer: install this build into a scratch prefix, then configure, build and run
# the small project in tests/consumer/ against it with find_package(resbm CONFIG REQUIRED).
add_test(NAME install_consumer
  COMMAND ${CMAKE_COMMAND}
    -DRESBM_SOURCE_DIR=${PROJECT_SOURCE_DIR}
    -DRESBM_BINARY_DIR=${PROJECT_BINARY_DIR}
    -DCONSUMER_SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/consumer
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/install_consumer
    -DCONFIG=$<CONFIG>
    -DGENERATOR=${CMAKE_GENERATOR}
    -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run.cmake)
set_tests_properties(install_consumer PROPERTIES TIMEOUT 900)
