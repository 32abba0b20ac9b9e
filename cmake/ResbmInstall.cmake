# install(): headers, the INTERFACE target and a package config, so that
#   find_package(resbm CONFIG REQUIRED) + target_link_libraries(x resbm::resbm) works.
include(CMakePackageConfigHelpers)
install(DIRECTORY include/resbm DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS resbm EXPORT resbmTargets)
install(EXPORT resbmTargets NAMESPACE resbm:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/resbm)
configure_package_config_file(cmake/resbmConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/resbmConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/resbm)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/resbmConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/resbmConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/resbmConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/resbm)
