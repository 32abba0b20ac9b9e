# Our own targets build with warnings as errors, and with sanitizers per RESBM_SANITIZE:
#   OFF                  none
#   ON / address         AddressSanitizer + UndefinedBehaviorSanitizer
#   thread               ThreadSanitizer (alone: it cannot be combined with ASan)
string(TOLOWER "${RESBM_SANITIZE}" _resbm_sanitize)
if(NOT RESBM_SANITIZE)
  set(RESBM_SANITIZER "")
elseif(_resbm_sanitize STREQUAL "thread")
  set(RESBM_SANITIZER thread)
elseif(_resbm_sanitize MATCHES "^(address|on|yes|true|y|1)$")
  set(RESBM_SANITIZER address)
else()
  message(FATAL_ERROR "RESBM_SANITIZE=${RESBM_SANITIZE}: use OFF, ON (= address), address or thread")
endif()

function(resbm_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-unknown-pragmas>
    $<$<COMPILE_LANGUAGE:CXX>:-march=native>
    # GCC 13 reports maybe-uninitialized inside std::variant moves (io::Json) that are
    # initialised; kept visible as a warning, not an error.
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>,$<VERSION_GREATER_EQUAL:$<CXX_COMPILER_VERSION>,13>>:-Wno-error=maybe-uninitialized>)
  if(RESBM_SANITIZER STREQUAL "address")
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined>)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  elseif(RESBM_SANITIZER STREQUAL "thread")
    # GCC warns (-Wtsan) that TSan does not model the std::atomic_thread_fence calls in
    # Asio; the fences order nothing TSan has to see here, and -Werror would stop the build.
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread -fno-omit-frame-pointer>
      $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-tsan>)
    target_link_options(${target} PRIVATE -fsanitize=thread)
  endif()
endfunction()
