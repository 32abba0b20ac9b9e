# Driven by tests/consumer.cmake (ctest install_consumer). Steps:
#   1. cmake --install <build> --prefix <work>/prefix
#   2. every header under include/resbm/ must be installed
#   3. the installed package config must not point back into the source or build tree
#   4. configure + build tests/consumer/ with -DCMAKE_PREFIX_PATH=<work>/prefix
#   5. run it and check what it prints
cmake_minimum_required(VERSION 3.25)
foreach(v RESBM_SOURCE_DIR RESBM_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: pass -D${v}=...")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run_step name)
  message(STATUS "install_consumer: ${name}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_consumer: ${name} failed (${rc})\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

# 1. install
run_step("install" ${CMAKE_COMMAND} --install ${RESBM_BINARY_DIR} --prefix ${prefix} --config ${CONFIG})

# 2. every header is installed
file(GLOB_RECURSE src_headers RELATIVE ${RESBM_SOURCE_DIR}/include
  ${RESBM_SOURCE_DIR}/include/resbm/*)
if(NOT src_headers)
  message(FATAL_ERROR "install_consumer: no headers under ${RESBM_SOURCE_DIR}/include/resbm")
endif()
foreach(h IN LISTS src_headers)
  if(NOT EXISTS ${prefix}/include/${h})
    message(FATAL_ERROR "install_consumer: ${h} was not installed under ${prefix}/include")
  endif()
endforeach()
list(LENGTH src_headers n_headers)
message(STATUS "install_consumer: all ${n_headers} headers installed")

# 3. the package config is relocatable
file(GLOB_RECURSE config_files ${prefix}/*/cmake/resbm/*.cmake)
if(NOT config_files)
  message(FATAL_ERROR "install_consumer: no package config under ${prefix}/*/cmake/resbm")
endif()
foreach(f IN LISTS config_files)
  file(READ ${f} text)
  foreach(tree ${RESBM_SOURCE_DIR} ${RESBM_BINARY_DIR})
    string(FIND "${text}" "${tree}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "install_consumer: ${f} refers to ${tree}")
    endif()
  endforeach()
endforeach()

# 4. configure and build the consumer against the installed tree only
run_step("configure consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build}
  -G ${GENERATOR} -DCMAKE_BUILD_TYPE=${CONFIG} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
  -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
string(REGEX MATCH "resbm found in [^\n]*" found_line "${step_output}")
message(STATUS "install_consumer: ${found_line}")
string(FIND "${step_output}" "resbm found in ${prefix}/" at)
if(at EQUAL -1)
  message(FATAL_ERROR "install_consumer: resbm was not found in ${prefix}\n${step_output}")
endif()
run_step("build consumer" ${CMAKE_COMMAND} --build ${build} --config ${CONFIG})

# 5. run it
find_program(consumer_exe resbm-consumer PATHS ${build} ${build}/${CONFIG} NO_DEFAULT_PATH REQUIRED)
run_step("run consumer" ${consumer_exe})
message(STATUS "install_consumer: consumer printed: ${step_output}")
if(NOT step_output MATCHES "resbm consumer OK: 3 parameters, 1080 values, sum of squares [0-9.]+")
  message(FATAL_ERROR "install_consumer: unexpected output:\n${step_output}")
endif()
