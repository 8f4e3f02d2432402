# The Python interpreter of the test references (tools/.venv, made by scripts/setup.sh from
# tools/requirements-reference.txt). Tests labelled `reference` run it and skip with a message when absent.
set(GRAFT_REF_PYTHON "${PROJECT_SOURCE_DIR}/tools/.venv/bin/python" CACHE FILEPATH
    "Python with the test references (torch, transformers, peft, bitsandbytes, tokenizers, openai, lm-eval)")

# Shared compile options for graft targets.
function(graft_target_options target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${GRAFT_WERROR}>>:-Werror>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${GRAFT_NATIVE}>>:${GRAFT_MARCH}>
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-Wall>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${GRAFT_WERROR}>>:-Werror=all-warnings>)
endfunction()

# graft_add_gtest(NAME name LABELS l1 [l2...] SOURCES ... LIBS ... [TEST_PREFIX p])
# TEST_PREFIX: prepended to every CTest name (the SIMT builds of the CUDA suites reuse their test names).
# One GoogleTest binary; every TEST becomes a CTest test carrying the labels.
function(graft_add_gtest)
  cmake_parse_arguments(T "" "NAME;TIMEOUT;TEST_PREFIX" "LABELS;SOURCES;LIBS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  graft_target_options(${T_NAME})
  # stdc++ named right after GoogleTest: gtest's static library references out-of-line libstdc++ template members
  # (std::string::_M_assign, ...) that C++20 objects also emit as weak copies. Without libstdc++ next on the link
  # line, the linker takes the first archive member that defines one, and in the SIMT tests that can be the CUDA
  # backend's object from libgraft_kernels_cuda.a (pulled in through graft_backend), whose make_cuda_backend then
  # collides with the SIMT build's: "multiple definition", after an unrelated edit of cuda_backend.cu.
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main stdc++)
  target_compile_definitions(${T_NAME} PRIVATE
    GRAFT_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    GRAFT_BINARY_DIR="${PROJECT_BINARY_DIR}"
    GRAFT_REF_PYTHON="${GRAFT_REF_PYTHON}")
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  include(GoogleTest)
  gtest_discover_tests(${T_NAME}
    TEST_PREFIX "${T_TEST_PREFIX}"
    PROPERTIES TIMEOUT ${T_TIMEOUT}
    DISCOVERY_TIMEOUT 60)
  # Labels are set by a second include file run after the discovered list (${T_NAME}_TESTS): passed through
  # gtest_discover_tests' PROPERTIES, a list like "unit;reference" is split into words and every label after
  # the first is lost (CMake 3.25), so `ctest -L reference` would not select the test.
  set(labels_file "${CMAKE_CURRENT_BINARY_DIR}/${T_NAME}_labels.cmake")
  file(WRITE "${labels_file}"
       "foreach(t IN LISTS ${T_NAME}_TESTS)\n  set_tests_properties(\"\${t}\" PROPERTIES LABELS \"${T_LABELS}\")\nendforeach()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${labels_file}")
endfunction()
