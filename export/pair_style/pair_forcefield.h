/* -*- c++ -*- ----------------------------------------------------------
   pair_style forcefield: LAMMPS pair style for forcefield TorchScript
   exports (a machine-learned, message-passing interatomic potential).

   Builds either as a LAMMPS plugin (forcefieldplugin.so, see CMakeLists.txt)
   or inside a LAMMPS source tree (see install_into_lammps_source.sh).
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(forcefield,PairForcefield);
// clang-format on
#else

#ifndef LMP_PAIR_FORCEFIELD_H
#define LMP_PAIR_FORCEFIELD_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace LAMMPS_NS {

// torch objects live in the .cpp so that this header, included by the plugin
// entry point (and by LAMMPS' style_pair.h in a source build), stays free of
// torch headers
struct ForcefieldTorchState;    // the loaded module, its device and dtype
struct ForcefieldModelCall;     // inputs and outputs of one model evaluation

class PairForcefield : public Pair {
 public:
  // ---- the exported-file contract ----
  // The format version this pair style reads and the TorchScript _extra_files
  // keys it requires. They must equal FORMAT_VERSION and METADATA_KEYS of the
  // Python exporter (forcefield.export.torchscript); tests/test_export_contract.py
  // parses these two lines and checks that they do.
  static constexpr int FORMAT_VERSION = 1;
  static constexpr const char *METADATA_KEYS[] = {"format_version", "species", "r_max", "num_layers", "dtype", "metadata.json"};

  PairForcefield(class LAMMPS *);
  ~PairForcefield() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void finish() override;

 protected:
  void allocate();
  void load_model(const std::string &path);
  void select_device(const std::string &choice);

  // the steps of compute(), in order
  void fold_periodic_images(int nlocal, int nall);
  void select_receptive_field(int nlocal, int nall);
  void build_edges();
  void pack_inputs(int nlocal, ForcefieldModelCall &call);
  void pack_inputs_staged(int nlocal, ForcefieldModelCall &call);    // the device path
  void dump_inputs_once(const ForcefieldModelCall &call);
  void run_model(ForcefieldModelCall &call);
  void scatter_outputs(const ForcefieldModelCall &call);
  void scatter_outputs_staged(const ForcefieldModelCall &call);    // the device path

  std::unique_ptr<ForcefieldTorchState> ts;
  bool model_loaded;

  std::string model_path;
  std::string device_choice;    // "cpu", "cuda" or "auto" as given by the user
  std::vector<std::string> model_species;    // element symbols in model order
  double r_max;                              // model cutoff (Angstrom)
  int num_layers;                            // message-passing layers
  std::string dtype_name;                    // "float32" or "float64"

  std::vector<int> type2species;    // atom type (1..ntypes) -> index into model_species (-1: unset)
  bool fold_requested;  // 'fold yes|no' (default: FORCEFIELD_FOLD, else yes)
  bool fold_active;     // folding in use (requested and the atoms have IDs)
  bool inputs_dumped;   // FORCEFIELD_DUMP_INPUTS handled (first evaluation only)
  bool timing;          // FORCEFIELD_TIMING set: time the model and the rest of compute()
  double time_model, time_outside;
  long ncalls;

  // per-step host buffers, kept to avoid reallocation
  std::vector<double> pos_d;
  std::vector<float> pos_f;
  std::vector<int64_t> species_buf;
  std::vector<int64_t> edge_src, edge_dst;
  std::vector<double> edge_shift;             // [E*3]: x_j - x_fold[j] (zero unless j is folded)
  std::vector<int> fold;                      // LAMMPS index -> the LAMMPS index that is its model node
                                              // (itself, or the owned atom a ghost is an image of)
  std::unordered_map<tagint, int> owned_by_tag;    // atom ID -> owned index (when LAMMPS keeps no map)
  std::vector<int> hop;                       // hops from the nearest owned atom
  std::vector<int> frontier, next_frontier;   // breadth-first search over edges < r_max
  std::vector<int> new_index;                 // LAMMPS index -> model index (-1: not sent)
  std::vector<int> kept;                      // model index -> LAMMPS index
};

}    // namespace LAMMPS_NS

#endif
#endif
