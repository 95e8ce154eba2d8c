# Install rules and the Debian package (included at the end of the top-level
# CMakeLists.txt).
#
#   cmake --install build [--prefix DIR]       FHS layout under the prefix
#   cmake -S . -B build-deb -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build-deb && cd build-deb && cpack -G DEB
#
# An installed gangway reads ${CMAKE_INSTALL_FULL_SYSCONFDIR}/gangway/config.lua
# by default (/etc/gangway/config.lua for the /usr prefix), which is absolute
# and fixed at configure time: that is why a package is built from a tree
# configured for its prefix (checked in packaging/cpack-options.cmake).
include(GNUInstallDirs)

set(GW_LUA_SERIES 5.4)
# Where lua5.4 looks for modules: package.path has <prefix>/share/lua/5.4,
# package.cpath <prefix>/lib/lua/5.4 and, on Debian, /usr/lib/<triplet>/lua/5.4
# (GNUInstallDirs' libdir for /usr).
set(GW_INSTALL_LUADIR ${CMAKE_INSTALL_DATADIR}/lua/${GW_LUA_SERIES})
set(GW_INSTALL_LUACDIR ${CMAKE_INSTALL_LIBDIR}/lua/${GW_LUA_SERIES})
set(GW_INSTALL_SHAREDIR ${CMAKE_INSTALL_DATADIR}/gangway)
set(GW_CONFIG_DIR ${CMAKE_INSTALL_FULL_SYSCONFDIR}/gangway)
set(GW_CONFIG_FILE ${GW_CONFIG_DIR}/config.lua)
set(GW_SHARE_DIR ${CMAKE_INSTALL_FULL_DATADIR}/gangway)
set(GW_SCRIPTS_DIR ${GW_SHARE_DIR}/scripts)
set(GW_DOCDIR ${CMAKE_INSTALL_FULL_DOCDIR})
set(GW_BIN ${CMAKE_INSTALL_FULL_BINDIR}/gangway)
# systemd's RuntimeDirectory=gangway is /run/gangway whatever the prefix.
set(GW_CONTROL_SOCKET /run/gangway/gangway.sock)
if(EXISTS /etc/debian_version)
  set(GW_ENV_FILE /etc/default/gangway)
else()
  set(GW_ENV_FILE /etc/sysconfig/gangway)
endif()

# Units of /usr go where systemd.pc says (/lib/systemd/system on Debian 12);
# any other prefix keeps its own (systemd also reads /usr/local/lib/systemd).
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  pkg_get_variable(GW_PC_UNITDIR systemd systemdsystemunitdir)
endif()
if(NOT GW_PC_UNITDIR)
  set(GW_PC_UNITDIR ${CMAKE_INSTALL_PREFIX}/lib/systemd/system)
endif()
set(GW_SYSTEMD_UNITDIR ${GW_PC_UNITDIR} CACHE PATH "where gangway.service is installed")

find_program(GW_LUA_INTERP lua${GW_LUA_SERIES})
if(GW_LUA_INTERP)
  execute_process(COMMAND ${GW_LUA_INTERP} -e "print(package.path .. ';' .. package.cpath)"
                  OUTPUT_VARIABLE GW_LUA_SEARCH OUTPUT_STRIP_TRAILING_WHITESPACE)
  foreach(dir ${GW_INSTALL_LUADIR} ${GW_INSTALL_LUACDIR})
    string(FIND "${GW_LUA_SEARCH}" "${CMAKE_INSTALL_PREFIX}/${dir}/?." at)
    if(at EQUAL -1)
      message(STATUS "lua${GW_LUA_SERIES} does not search ${CMAKE_INSTALL_PREFIX}/${dir}: "
                     "installed, gangway.testing needs LUA_PATH/LUA_CPATH")
    endif()
  endforeach()
endif()

# ---- what is installed ------------------------------------------------------

# topd, topbot and topchat are not installed: they are the demo's toy game
# server and clients (tools/demo.sh runs them from the build tree), not
# something a proxy host runs, and their names are too generic for bin/.
install(TARGETS gangway RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET gangway_luamod)
  install(TARGETS gangway_luamod LIBRARY DESTINATION ${GW_INSTALL_LUACDIR}/gangway)
  # lua/ is a Lua module tree: gangway/testing.lua is `gangway.testing`.
  install(DIRECTORY ${CMAKE_SOURCE_DIR}/lua/ DESTINATION ${GW_INSTALL_LUADIR}
          FILES_MATCHING PATTERN "*.lua")
endif()

# The example scripts and their specs: `cd <datadir>/gangway && busted`
# runs them (spec/ finds scripts/ and protocols/ from there).
file(GLOB GW_EXAMPLE_SCRIPTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/scripts/*.lua)
set(GW_EXAMPLE_SPECS)
foreach(script ${GW_EXAMPLE_SCRIPTS})
  get_filename_component(name ${script} NAME_WE)
  if(EXISTS ${CMAKE_SOURCE_DIR}/spec/${name}_spec.lua)
    list(APPEND GW_EXAMPLE_SPECS ${CMAKE_SOURCE_DIR}/spec/${name}_spec.lua)
  endif()
endforeach()
install(FILES ${GW_EXAMPLE_SCRIPTS} DESTINATION ${GW_INSTALL_SHAREDIR}/scripts)
install(FILES ${GW_EXAMPLE_SPECS} DESTINATION ${GW_INSTALL_SHAREDIR}/spec)
# The protocol modules (packets.lua, init.lua): `protocol = "top"` finds them
# here when the config's directory has no protocols/top (GW_PROTOCOLS_DIR).
install(DIRECTORY ${CMAKE_SOURCE_DIR}/protocols/ DESTINATION ${GW_INSTALL_SHAREDIR}/protocols
        FILES_MATCHING PATTERN "*.lua")

install(FILES ${CMAKE_SOURCE_DIR}/README.md ${CMAKE_SOURCE_DIR}/docs/config.md
              ${CMAKE_SOURCE_DIR}/docs/lua-api.md ${CMAKE_SOURCE_DIR}/docs/pipeline.md
              ${CMAKE_SOURCE_DIR}/docs/admin.md ${CMAKE_SOURCE_DIR}/docs/protocols.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

configure_file(${CMAKE_SOURCE_DIR}/packaging/config.lua.in
               ${CMAKE_BINARY_DIR}/packaging/config.lua @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/packaging/config.lua DESTINATION ${GW_CONFIG_DIR})

configure_file(${CMAKE_SOURCE_DIR}/packaging/gangway.service.in
               ${CMAKE_BINARY_DIR}/packaging/gangway.service @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/packaging/gangway.service
        DESTINATION ${GW_SYSTEMD_UNITDIR})

# gangway(8), from scdoc source, compressed as Debian installs man pages.
find_program(GW_SCDOC scdoc)
find_program(GW_GZIP gzip)
if(GW_SCDOC AND GW_GZIP)
  # The source with this prefix's paths filled in.
  set(GW_MAN_SRC ${CMAKE_BINARY_DIR}/man/gangway.8.scd)
  configure_file(${CMAKE_SOURCE_DIR}/docs/gangway.8.scd ${GW_MAN_SRC} @ONLY)
  set(GW_MAN ${CMAKE_BINARY_DIR}/man/gangway.8)
  add_custom_command(
    OUTPUT ${GW_MAN} ${GW_MAN}.gz
    COMMAND sh -c "'${GW_SCDOC}' < '${GW_MAN_SRC}' > '${GW_MAN}.tmp' && mv '${GW_MAN}.tmp' '${GW_MAN}'"
    COMMAND sh -c "'${GW_GZIP}' -9nc '${GW_MAN}' > '${GW_MAN}.gz'"
    DEPENDS ${GW_MAN_SRC}
    COMMENT "Building the man page gangway(8)"
    VERBATIM)
  add_custom_target(gangway_man ALL DEPENDS ${GW_MAN} ${GW_MAN}.gz)
  install(FILES ${GW_MAN}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
else()
  message(STATUS "scdoc or gzip missing: no man page")
endif()

# ---- the Debian package -----------------------------------------------------

set(CPACK_PACKAGE_NAME gangway)
set(CPACK_PACKAGE_VENDOR "gangway")
set(CPACK_PACKAGE_CONTACT "gangway maintainers <maintainers@users.noreply.r-seed-b460ee4f.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Lua-scriptable TCP proxy for game protocols")
set(CPACK_PACKAGE_DESCRIPTION "gangway sits between game clients and a game server and runs Lua rules on
whole frames of the game's protocol: drop, rewrite or inject frames, keep
per-session state, run timers. Frames no rule asked for are relayed in C
without a copy. Length-prefixed protocols are described in config.lua, with
Tales of Pirates as a preset. Scripts reload live.")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_INSTALL_DIRECTORY gangway)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
# The config and the unit have absolute destinations: stage through DESTDIR.
set(CPACK_SET_DESTDIR ON)
set(CPACK_STRIP_FILES OFF)
set(CPACK_GENERATOR TGZ)
find_program(GW_DPKG_DEB dpkg-deb)
if(GW_DPKG_DEB)
  set(CPACK_GENERATOR DEB)
endif()
set(CPACK_PROJECT_CONFIG_FILE ${CMAKE_SOURCE_DIR}/packaging/cpack-options.cmake)
set(CPACK_GW_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_OUTPUT_FILE_PREFIX ${CMAKE_BINARY_DIR}/packages)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# dpkg-shlibdeps derives libc6, libuv1, liblua5.4-0, lua-cjson (and
# libsystemd0) from what the binary and the Lua module link; postinst needs
# adduser; the example specs run under busted.
find_program(GW_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(GW_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
else()
  message(STATUS "dpkg-shlibdeps missing (dpkg-dev): Depends listed by hand")
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser, libc6, libuv1, liblua5.4-0, lua-cjson")
endif()
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "lua-busted, lua5.4")
configure_file(${CMAKE_SOURCE_DIR}/packaging/deb/conffiles.in
               ${CMAKE_BINARY_DIR}/packaging/deb/conffiles @ONLY)
foreach(script postinst prerm postrm)
  configure_file(${CMAKE_SOURCE_DIR}/packaging/deb/${script}
                 ${CMAKE_BINARY_DIR}/packaging/deb/${script} COPYONLY)
endforeach()
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/packaging/deb/conffiles
    ${CMAKE_BINARY_DIR}/packaging/deb/postinst
    ${CMAKE_BINARY_DIR}/packaging/deb/prerm
    ${CMAKE_BINARY_DIR}/packaging/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
