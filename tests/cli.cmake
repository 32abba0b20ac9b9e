# End-to-end runs of resbm-train (tests/cli/train_cli.py), one ctest per check.
if(TARGET resbm-train)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  foreach(check help errors result_fields resume pipeline_modes launch_errors kill_resume tls converges)
    add_test(NAME train_cli_${check}
      COMMAND Python3::Interpreter ${CMAKE_CURRENT_SOURCE_DIR}/cli/train_cli.py
              $<TARGET_FILE:resbm-train> ${CMAKE_CURRENT_BINARY_DIR}/train_cli ${check})
    set_tests_properties(train_cli_${check} PROPERTIES TIMEOUT 1200)
  endforeach()
  # Minutes of training: not repeated under the sanitizers (ctest -LE slow there).
  set_tests_properties(train_cli_converges PROPERTIES LABELS slow)
endif()
