# Read by cpack for each generator (CPACK_PROJECT_CONFIG_FILE).
# A Debian package installs under /usr, and an installed gangway's default
# config path was fixed when the tree was configured: refuse a package from
# a tree configured for another prefix (/usr/local by default) rather than
# ship a gangway that looks for /usr/local/etc/gangway/config.lua.
if(CPACK_GENERATOR STREQUAL "DEB" AND NOT CPACK_GW_INSTALL_PREFIX STREQUAL "/usr")
  message(FATAL_ERROR "a Debian package needs a tree configured with "
                      "-DCMAKE_INSTALL_PREFIX=/usr (this one has ${CPACK_GW_INSTALL_PREFIX})")
endif()
