/* ----------------------------------------------------------------------
   pair_style forcefield: evaluates a forcefield TorchScript export.

   Usage:
     newton on
     pair_style forcefield model.pt [device cpu|cuda|auto] [fold yes|no]
     pair_coeff * * Cu Au        (one element symbol per atom type)

   Design (see README.md in this folder):
   - full neighbour list including the neighbours of ghost atoms;
   - folding (default, 'fold no' or FORCEFIELD_FOLD=0 turns it off): a
     ghost atom that is a periodic image of an atom owned by this rank is
     not a model node; an edge to it points at the owner, with the shift
     x_image - x_owner (as the Python graph of a periodic cell). The model
     nodes are the owned atoms and the other ghosts (images of atoms owned
     by other ranks); on one rank that is exactly the owned atoms;
   - edges i->j with |x_j - x_i| < r_max for every node i within
     num_layers-1 hops of an owned atom, and the nodes within num_layers
     hops, go to the model (the rest of the ghost shell cannot affect the
     owned atoms' energy);
   - the model returns the energy of the owned atoms, per-atom energies,
     -dE/dx for every node and the virial; forces on ghost nodes are summed
     onto their owners by LAMMPS' reverse communication, so newton_pair
     must be on (folded images get no force of their own: the shift
     vectors put their share on the owner inside the model);
   - the ghost shell must reach num_layers*r_max (+ skin) so that every
     message reaching an owned atom is computed from complete
     neighbourhoods; the pair style raises comm->cutghostuser to that
     (with folding, one rank uses only the r_max + skin next to its
     subdomain: the owned atoms' neighbours).

   The exported-file contract (FORMAT_VERSION, METADATA_KEYS) is declared
   in pair_forcefield.h.
------------------------------------------------------------------------- */

#include <algorithm>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include "pair_forcefield.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <unordered_map>

using namespace LAMMPS_NS;

// channelwise_tp.cpp: the fused message-product operators this pair style registers
bool forcefield_channelwise_tp_linked();

namespace LAMMPS_NS {

struct ForcefieldTorchState {
  torch::jit::Module model;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype{torch::kFloat64};    // model dtype: kFloat32 or kFloat64
  // The device path (CUDA; on CPU only with FORCEFIELD_DEVICE_PATH=1, to test it): the
  // inputs go in ONE host-to-device copy from a staging buffer (pinned on CUDA) into a
  // device buffer, both kept and grown between steps, the species tensor is reused while
  // the kept atoms' species do not change, and the outputs come back in ONE device-to-host
  // copy. The CPU path (the default on CPU) is unchanged.
  bool staged = false;
  torch::Tensor host_in, dev_in;    // uint8 staging buffers: edge_index | pos | shifts
  torch::Tensor host_out;           // float64 [3N + 6 + 1 (+ N)]: forces, virial, energy, node energy
  torch::Tensor species_dev;        // species of the kept nodes on the device (reused)
  std::vector<int64_t> species_prev;
  long species_uploads = 0;         // how often species_dev was (re)built (FORCEFIELD_TIMING)
};

// one model evaluation: what pack_inputs() gives run_model(), and what
// run_model() gives scatter_outputs()
struct ForcefieldModelCall {
  int64_t nlocal = 0;    // atoms [0, nlocal) are owned: the energy is theirs
  // inputs, on the model's device: pos [N,3] (model dtype), species [N],
  // edge_index [2,E], shifts [E,3] (model dtype; nonzero for folded images)
  torch::Tensor pos, species, edge_index, shifts;
  // outputs, as the model returned them: energy [], node_energy [N],
  // forces [N,3], virial [6]
  torch::Tensor energy, node_energy, forces, virial;
};

}    // namespace LAMMPS_NS

namespace {

constexpr const char *PAIR_STYLE_USAGE =
    "Usage: pair_style forcefield <model.pt> [device cpu|cuda|auto] [fold yes|no]";

// 'fold' default: FORCEFIELD_FOLD=0|no|off|false turns folding off, 1|yes|on|true (or
// unset) keeps it on; returns -1 for anything else
int fold_from_env()
{
  const char *env = std::getenv("FORCEFIELD_FOLD");
  if (!env || !*env) return 1;
  const std::string v = utils::lowercase(utils::trim(env));
  if (v == "0" || v == "no" || v == "off" || v == "false") return 0;
  if (v == "1" || v == "yes" || v == "on" || v == "true") return 1;
  return -1;
}

// Every model evaluation allocates and frees tensors. glibc serves blocks above its mmap
// threshold (at most 32 MB) with fresh mmap()s and trims the heap top, so each step pays
// page faults and zeroing again. Since the model's inference path works in chunks
// (docs/design.md, "Inference path") its live peak is small and steady, so keeping freed
// memory in the heap (no mmap for large blocks, no trimming) costs no memory any more
// (8.8k atoms: the same peak RSS, 10x fewer page faults, 8% faster; bench/README.md).
// On by default; FORCEFIELD_MALLOC_TUNING=0 leaves glibc's defaults.
bool tune_malloc()
{
#if defined(__GLIBC__)
  static bool done = false;
  static bool tuned = false;
  if (!done) {
    done = true;
    const char *env = std::getenv("FORCEFIELD_MALLOC_TUNING");
    if (!(env && std::string(env) == "0"))
      tuned = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1;
  }
  return tuned;
#else
  return false;
#endif
}

double walltime()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// first line of a (possibly very long) torch error message
std::string first_line(const std::string &s)
{
  auto n = s.find('\n');
  return utils::trim(n == std::string::npos ? s : s.substr(0, n));
}

// Edges per chunk of the model's inference path and atoms per chunk of its node updates
// on a GPU (forcefield.model.deployed.GPU_EDGE_CHUNK / GPU_NODE_CHUNK, which the Python
// loader uses; the exported defaults are CPU-sized: a chunk's temporaries stay below
// glibc's mmap threshold). On a GPU a chunk is a batch of kernel launches, so larger
// chunks mean fewer launches; 32768 edges keep a chunk's temporaries near 1 GB (float32,
// default model). FORCEFIELD_EDGE_CHUNK / FORCEFIELD_NODE_CHUNK override on any device.
constexpr int64_t GPU_EDGE_CHUNK = 32768;
constexpr int64_t GPU_NODE_CHUNK = 16384;

// a positive integer from the environment, else `fallback`
int64_t chunk_from_env(const char *name, int64_t fallback)
{
  const char *env = std::getenv(name);
  if (!env || !*env) return fallback;
  char *end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  return (end && *end == '\0' && v > 0) ? (int64_t) v : fallback;
}

// bytes rounded up to a multiple of 8 (offsets into the staging buffers: every view of
// them must be aligned for int64 / double)
size_t align8(size_t n)
{
  return (n + 7) & ~size_t(7);
}

// `buf` with at least `bytes` bytes (kept when large enough, else grown by 1.5x)
void reserve_bytes(torch::Tensor &buf, size_t bytes, const torch::TensorOptions &opt)
{
  if (buf.defined() && (size_t) buf.numel() >= bytes) return;
  const size_t grown = buf.defined() ? (size_t) buf.numel() + (size_t) buf.numel() / 2 : 0;
  buf = torch::empty({(int64_t) std::max(bytes, std::max(grown, size_t(64)))}, opt);
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairForcefield::PairForcefield(LAMMPS *lmp) :
    Pair(lmp), ts(std::make_unique<ForcefieldTorchState>()), model_loaded(false), r_max(0.0),
    num_layers(0), fold_requested(true), fold_active(true), inputs_dumped(false), timing(false),
    time_model(0.0), time_outside(0.0), ncalls(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 0;    // we check for "* *" ourselves, with a clearer message
  manybody_flag = 1;
  ghostneigh = 1;                  // neighbours of ghost atoms are needed
  no_virial_fdotr_compute = 1;     // the model returns the virial
  centroidstressflag = CENTROID_NOTAVAIL;
  const char *t = std::getenv("FORCEFIELD_TIMING");
  timing = t && *t && std::string(t) != "0";
}

/* ---------------------------------------------------------------------- */

// ts and the std::vector members free themselves; the per-type arrays the
// Pair base class expects are LAMMPS memory
PairForcefield::~PairForcefield()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

/* ---------------------------------------------------------------------- */

void PairForcefield::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      setflag[i][j] = 0;
      cutsq[i][j] = 0.0;
      cutghost[i][j] = 0.0;
    }
  type2species.assign(n, -1);
}

/* ----------------------------------------------------------------------
   pair_style forcefield model.pt [device cpu|cuda|auto] [fold yes|no]
------------------------------------------------------------------------- */

void PairForcefield::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style forcefield command: missing model file. {}", PAIR_STYLE_USAGE);

  std::string path = arg[0];
  std::string dev = "auto";
  const int fold_env = fold_from_env();
  if (fold_env < 0)
    error->all(FLERR, "pair_style forcefield: FORCEFIELD_FOLD='{}' is not one of 0, 1, no, yes, off, on",
               std::getenv("FORCEFIELD_FOLD"));
  bool fold = fold_env == 1;
  int iarg = 1;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (key == "device") {
      if (iarg + 1 >= narg)
        error->all(FLERR, "Illegal pair_style forcefield command: 'device' needs a value (cpu, cuda or auto). {}",
                   PAIR_STYLE_USAGE);
      dev = arg[iarg + 1];
      if (dev != "cpu" && dev != "cuda" && dev != "auto")
        error->all(FLERR, "Illegal pair_style forcefield command: unknown device '{}' (expected cpu, cuda or auto). {}",
                   dev, PAIR_STYLE_USAGE);
      iarg += 2;
    } else if (key == "fold") {
      if (iarg + 1 >= narg)
        error->all(FLERR, "Illegal pair_style forcefield command: 'fold' needs a value (yes or no). {}",
                   PAIR_STYLE_USAGE);
      const std::string v = arg[iarg + 1];
      if (v != "yes" && v != "no")
        error->all(FLERR, "Illegal pair_style forcefield command: fold '{}' (expected yes or no). {}", v,
                   PAIR_STYLE_USAGE);
      fold = v == "yes";
      iarg += 2;
    } else {
      error->all(FLERR, "Illegal pair_style forcefield command: unknown keyword '{}'. {}", key, PAIR_STYLE_USAGE);
    }
  }

  // a new model invalidates an earlier pair_coeff mapping
  if (allocated) {
    for (int i = 0; i <= atom->ntypes; i++) {
      type2species[i] = -1;
      for (int j = 0; j <= atom->ntypes; j++) setflag[i][j] = 0;
    }
  }

  device_choice = dev;
  fold_requested = fold_active = fold;
  select_device(dev);
  load_model(path);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style forcefield: fold {}: {}\n", fold ? "yes" : "no",
                   fold ? "periodic images of owned atoms are folded onto their owners (shift vectors)"
                        : "periodic images are separate ghost nodes");
  if (tune_malloc() && comm->me == 0)
    utils::logmesg(lmp, "pair_style forcefield: glibc malloc keeps freed memory for reuse (no mmap "
                        "for large blocks, no trimming; FORCEFIELD_MALLOC_TUNING=0 turns this off)\n");
}

/* ----------------------------------------------------------------------
   cpu | cuda | auto; with CUDA each rank uses GPU (node-local rank % #GPUs)
------------------------------------------------------------------------- */

void PairForcefield::select_device(const std::string &choice)
{
  bool cuda_ok = torch::cuda::is_available();
  bool use_cuda = false;
  if (choice == "cuda") {
    if (!cuda_ok)
      error->all(FLERR,
                 "pair_style forcefield: 'device cuda' requested but torch reports no usable CUDA "
                 "device (is libtorch a CUDA build and a GPU visible?). Use 'device cpu'.");
    use_cuda = true;
  } else if (choice == "auto") {
    use_cuda = cuda_ok;
  }

  if (!use_cuda) {
    ts->device = torch::Device(torch::kCPU);
  } else {
    // node-local rank: ranks sharing memory are on the same node
    MPI_Comm local;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &local);
    int local_rank = 0;
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_free(&local);
    int ngpu = (int) torch::cuda::device_count();
    if (ngpu < 1) error->one(FLERR, "pair_style forcefield: CUDA available but no device found");
    ts->device = torch::Device(torch::kCUDA, (c10::DeviceIndex) (local_rank % ngpu));
  }
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style forcefield: device {} (requested {})\n", ts->device.str(), choice);
}

/* ----------------------------------------------------------------------
   load the TorchScript export and check its metadata
------------------------------------------------------------------------- */

void PairForcefield::load_model(const std::string &path)
{
  if (!forcefield_channelwise_tp_linked())
    error->all(FLERR, "pair_style forcefield: the fused operators (channelwise_tp.cpp) are missing from this build");
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe.good())
      error->all(FLERR, "pair_style forcefield: cannot open model file '{}' (missing or unreadable)", path);
  }

  std::unordered_map<std::string, std::string> extra;
  for (const char *k : METADATA_KEYS) extra[k] = "";
  extra["operators"] = "";  // optional: exports made before it list their operators in metadata.json only

  torch::jit::Module m;
  std::string failure;
  bool failed = false;
  try {
    m = torch::jit::load(path, ts->device, extra);
  } catch (const std::exception &e) {
    failure = first_line(e.what());
    failed = true;
  }
  if (failed && failure.find("Unknown builtin op: forcefield::") != std::string::npos)
    error->all(FLERR,
               "pair_style forcefield: '{}' calls an operator this plugin does not have ({}): rebuild the "
               "plugin with the forcefield version that exported the model (forcefield lammps-plugin)",
               path, failure);
  if (failed)
    error->all(FLERR,
               "pair_style forcefield: '{}' is not a loadable TorchScript file (export the model with "
               "forcefield's export_model): {}",
               path, failure);

  std::vector<std::string> missing;
  for (const char *k : METADATA_KEYS)
    if (utils::trim(extra[k]).empty()) missing.push_back(k);
  if (!missing.empty())
    error->all(FLERR,
               "pair_style forcefield: '{}' is not a forcefield export: missing metadata {} (re-export "
               "the model with forcefield's export_model)",
               path, utils::join_words(missing, ", "));

  const std::string fv = utils::trim(extra["format_version"]);
  if (fv != std::to_string(FORMAT_VERSION))
    error->all(FLERR,
               "pair_style forcefield: '{}' has unsupported format_version '{}'; this pair style reads "
               "format_version {} (rebuild the plugin from the same forcefield version that exported "
               "the model)",
               path, fv, FORMAT_VERSION);

  std::vector<std::string> species = utils::split_words(extra["species"]);
  if (species.empty()) error->all(FLERR, "pair_style forcefield: '{}' lists no species", path);

  const std::string rs = utils::trim(extra["r_max"]);
  const std::string ns = utils::trim(extra["num_layers"]);
  if (!utils::is_double(rs) || !utils::is_integer(ns))
    error->all(FLERR, "pair_style forcefield: '{}' has malformed r_max '{}' or num_layers '{}'", path, rs, ns);
  const double rc = utils::numeric(FLERR, rs, false, lmp);
  const int nl = utils::inumeric(FLERR, ns, false, lmp);
  if (!(rc > 0.0) || !std::isfinite(rc) || nl < 1)
    error->all(FLERR, "pair_style forcefield: '{}' has invalid r_max {} or num_layers {}", path, rs, ns);

  const std::string dt = utils::trim(extra["dtype"]);
  torch::Dtype tdt;
  if (dt == "float64")
    tdt = torch::kFloat64;
  else if (dt == "float32")
    tdt = torch::kFloat32;
  else
    error->all(FLERR, "pair_style forcefield: '{}' has unsupported dtype '{}' (expected float32 or float64)",
               path, dt);

  m.eval();
  ts->model = m;
  model_loaded = true;
  model_path = path;
  model_species = species;
  r_max = rc;
  num_layers = nl;
  ts->dtype = tdt;
  dtype_name = dt;

  // shapes change every step: do not specialise the graph on static shapes
  torch::jit::FusionStrategy strategy = {{torch::jit::FusionBehavior::DYNAMIC, 10}};
  torch::jit::setFusionStrategy(strategy);

  // The inference path splits the message product into cache-sized pieces of
  // `message_chunk` edges. That pays on one CPU thread only (also with the fused kernel of
  // channelwise_tp.cpp, which exports that call forcefield::channelwise_tp use on CPU: the
  // gathers around it stay in cache); with several threads each small operation pays for
  // waking the others (1.3x slower at 1024 atoms on 2 threads), on a GPU for a kernel
  // launch: there whole edge chunks go at once. TorchScript cannot read the thread count,
  // so the loader decides (Python: forcefield.model.deployed.match_threads).
  // which operators the export calls: its `operators` entry (older exports: metadata.json)
  const std::vector<std::string> operators = utils::split_words(extra["operators"]);
  const bool listed = std::find(operators.begin(), operators.end(), "forcefield::channelwise_tp") != operators.end();
  const bool fused = ts->device.is_cpu() &&
                     (listed || (operators.empty() &&
                                 extra["metadata.json"].find("\"forcefield::channelwise_tp\"") != std::string::npos));
  std::string pieces = "as exported";
  torch::jit::Module core = m;
  if (m.hasattr("model") && m.attr("model").isModule()) core = m.attr("model").toModule();
  // chunk sizes: the export's (CPU-sized) on CPU, GPU-sized on a GPU; the environment overrides
  std::string chunks;
  if (core.hasattr("edge_chunk") && core.hasattr("node_chunk")) {
    const bool gpu = !ts->device.is_cpu();
    const int64_t edge_chunk =
        chunk_from_env("FORCEFIELD_EDGE_CHUNK", gpu ? GPU_EDGE_CHUNK : core.attr("edge_chunk").toInt());
    const int64_t node_chunk =
        chunk_from_env("FORCEFIELD_NODE_CHUNK", gpu ? GPU_NODE_CHUNK : core.attr("node_chunk").toInt());
    if (edge_chunk != core.attr("edge_chunk").toInt()) core.setattr("edge_chunk", edge_chunk);
    if (node_chunk != core.attr("node_chunk").toInt()) core.setattr("node_chunk", node_chunk);
    chunks = "\n  inference chunks: " + std::to_string(edge_chunk) + " edges, " + std::to_string(node_chunk) + " atoms";
  }
  if (core.hasattr("message_chunk") && core.hasattr("edge_chunk")) {
    const int threads = at::get_num_threads();
    if (!ts->device.is_cpu() || threads != 1) core.setattr("message_chunk", core.attr("edge_chunk").toInt());
    const int64_t piece = core.attr("message_chunk").toInt();
    pieces = std::string(fused ? "fused kernel, " : "") +
        (piece == core.attr("edge_chunk").toInt() ? "whole edge chunks of " : "pieces of ") + std::to_string(piece) +
        " edges (" + (ts->device.is_cpu() ? "CPU, " : "GPU, ") + std::to_string(threads) +
        (threads == 1 ? " thread)" : " threads)");
  }

  // the device path (see ForcefieldTorchState): always on a GPU; FORCEFIELD_DEVICE_PATH=1 takes
  // it on CPU too (tests compare it with the CPU path there)
  const char *dp = std::getenv("FORCEFIELD_DEVICE_PATH");
  ts->staged = !ts->device.is_cpu() || (dp && std::string(dp) == "1");
  ts->host_in = ts->dev_in = ts->host_out = ts->species_dev = torch::Tensor();
  ts->species_prev.clear();
  ts->species_uploads = 0;

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style forcefield: loaded {}\n  species: {}\n  r_max: {} A, num_layers: {}, dtype: {}\n"
                   "  message product: {}{}\n  inputs and outputs: {}\n",
                   path, utils::join_words(species, " "), rs, nl, dt, pieces, chunks,
                   ts->staged ? "device path (one copy in, one copy out per step)" : "CPU path");
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ...  (one element symbol per atom type)
------------------------------------------------------------------------- */

void PairForcefield::coeff(int narg, char **arg)
{
  if (!model_loaded)
    error->all(FLERR, "pair_coeff for pair_style forcefield: pair_style must be set first");
  if (!allocated) allocate();

  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "pair_coeff for pair_style forcefield must be of the form 'pair_coeff * * El1 El2 ...' "
               "(type ranges other than '* *' are not supported); expected 'pair_coeff * * <element "
               "for each of the {} atom types>'",
               ntypes);
  if (narg - 2 != ntypes)
    error->all(FLERR,
               "pair_coeff for pair_style forcefield: got {} element(s) for {} atom type(s); expected "
               "'pair_coeff * * <element for each of the {} atom types>' (model species: {})",
               narg - 2, ntypes, ntypes, utils::join_words(model_species, " "));

  for (int itype = 1; itype <= ntypes; itype++) {
    const std::string el = arg[itype + 1];
    auto found = std::find(model_species.begin(), model_species.end(), el);
    if (found == model_species.end())
      error->all(FLERR,
                 "pair_coeff for pair_style forcefield: element '{}' (atom type {}) is not in the model "
                 "'{}'; the model's species are: {}",
                 el, itype, model_path, utils::join_words(model_species, " "));
    type2species[itype] = (int) (found - model_species.begin());
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

/* ---------------------------------------------------------------------- */

void PairForcefield::init_style()
{
  if (!model_loaded) error->all(FLERR, "pair_style forcefield: no model loaded");
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style forcefield requires 'newton on' (forces on ghost atoms are "
                      "summed by reverse communication); remove 'newton off' from the input");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style forcefield requires 'units metal' (eV, Angstrom), got 'units {}'",
               update->unit_style);

  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // folding finds a ghost's owner by its atom ID
  fold_active = fold_requested && atom->tag_enable;
  if (fold_requested && !atom->tag_enable && comm->me == 0)
    error->warning(FLERR, "pair_style forcefield: atoms have no IDs (atom_modify id no): periodic "
                          "images cannot be folded onto their owners and are sent as ghost atoms");

  // ghost atoms must reach num_layers * r_max (+ skin, atoms move between
  // neighbour-list builds) so that owned atoms see complete receptive fields
  // (lengths logged with six decimals)
  double need = num_layers * r_max + neighbor->skin;
  if (comm->mode == Comm::SINGLE) {
    if (comm->cutghostuser < need) {
      comm->cutghostuser = need;
      if (comm->me == 0)
        utils::logmesg(lmp,
                       "pair_style forcefield: ghost cutoff set to {:.6f} A = num_layers ({}) * r_max "
                       "({:.6f}) + skin ({:.6f})\n",
                       need, num_layers, r_max, neighbor->skin);
    }
  } else {
    error->all(FLERR,
               "pair_style forcefield needs a single ghost cutoff of at least {:.6f} A: use "
               "'comm_modify mode single cutoff {:.6f}'",
               need, need);
  }
}

/* ---------------------------------------------------------------------- */

double PairForcefield::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR, "pair_style forcefield: pair_coeff * * <elements> is missing");
  cutghost[i][j] = cutghost[j][i] = r_max;
  return r_max;
}

/* ----------------------------------------------------------------------
   one force evaluation: select what the model needs, pack it into
   tensors, call the model, add its outputs to LAMMPS' arrays
------------------------------------------------------------------------- */

void PairForcefield::compute(int eflag, int vflag)
{
  const double t_start = timing ? walltime() : 0.0;
  ev_init(eflag, vflag);

  if (vflag_atom || cvflag_atom)
    error->all(FLERR, "pair_style forcefield does not support per-atom virial (compute "
                      "stress/atom, centroid/stress/atom, heat/flux); only the global virial "
                      "(pressure) is available");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;

  // a rank without owned atoms contributes nothing: no energy, no forces
  // (its ghost atoms' owners get their forces from the other ranks)
  if (nlocal == 0 || nall == 0) return;

  fold_periodic_images(nlocal, nall);
  select_receptive_field(nlocal, nall);
  build_edges();
  ForcefieldModelCall call;
  pack_inputs(nlocal, call);
  dump_inputs_once(call);

  const double t_model0 = timing ? walltime() : 0.0;
  run_model(call);
  if (timing && ts->device.is_cuda()) torch::cuda::synchronize();    // the model's kernels, not only their launch
  const double t_model1 = timing ? walltime() : 0.0;

  scatter_outputs(call);

  if (timing) {
    const double t_end = walltime();
    time_model += t_model1 - t_model0;
    time_outside += (t_model0 - t_start) + (t_end - t_model1);
    ncalls++;
  }
}

/* ----------------------------------------------------------------------
   which LAMMPS atoms are model nodes (fills fold)

   fold[i] = i: atom i is a node of its own (owned atoms; ghosts that are
   not images of an owned atom; every atom when folding is off).
   fold[j] = o < nlocal: ghost j is a periodic image of owned atom o (same
   atom ID); it is no node: edges to it point at o with the shift x_j - x_o.
   atom->map(ID) returns the smallest local index with that ID (LAMMPS sets
   the map in reverse index order), i.e. the owned copy if this rank owns the
   atom; without a map (atomic systems have none unless asked for with
   atom_modify map) an ID -> owned index table is built here.
------------------------------------------------------------------------- */

void PairForcefield::fold_periodic_images(int nlocal, int nall)
{
  fold.resize(nall);
  for (int i = 0; i < nall; i++) fold[i] = i;
  if (!fold_active) return;

  const tagint *tag = atom->tag;
  if (atom->map_style != Atom::MAP_NONE) {
    for (int j = nlocal; j < nall; j++) {
      const int o = atom->map(tag[j]);
      if (o >= 0 && o < nlocal) fold[j] = o;
    }
  } else {
    owned_by_tag.clear();
    owned_by_tag.reserve(nlocal);
    for (int i = 0; i < nlocal; i++) owned_by_tag.emplace(tag[i], i);
    for (int j = nlocal; j < nall; j++) {
      auto found = owned_by_tag.find(tag[j]);
      if (found != owned_by_tag.end()) fold[j] = found->second;
    }
  }
}

/* ----------------------------------------------------------------------
   which nodes the model needs (fills hop, new_index, kept)

   Only owned atoms carry energy, so with L message-passing layers a node
   matters only if it is within L hops (edges shorter than r_max) of an owned
   atom, and an edge only if its centre is within L-1 hops. hop[i] is that
   distance in hops (L+1: beyond) for every node i (fold[i] == i), from a
   breadth-first search over the neighbour lists of the nodes, an edge
   i->j reaching node fold[j] (a folded image reaches its owner, hop 0; on
   one rank the search therefore stops at once). Everything else in the
   (L r_max + skin) ghost shell is dropped, and the kept nodes are
   renumbered: owned atoms keep 0..nlocal-1, kept ghost nodes follow in
   LAMMPS order. The result is identical to sending every atom and edge
   (the model prunes the same way inside).

   With folding, a ghost node's hop count is never smaller than without
   (a folded path from an owned atom is an unfolded one that jumps back
   from an image to its owner, which it could have started from), so the
   nodes used as centres (hop <= L-1) have complete neighbour lists in the
   (L r_max + skin) ghost shell, as without folding.
------------------------------------------------------------------------- */

void PairForcefield::select_receptive_field(int nlocal, int nall)
{
  double **x = atom->x;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double rsq_max = r_max * r_max;
  const int far = num_layers + 1;

  hop.assign(nall, far);
  frontier.clear();
  for (int i = 0; i < nlocal; i++) {
    hop[i] = 0;
    frontier.push_back(i);
  }
  for (int k = 0; k < num_layers && !frontier.empty(); k++) {
    next_frontier.clear();
    for (int i : frontier) {
      const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
      const int *jlist = firstneigh[i];
      const int jnum = numneigh[i];
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        const int t = fold[j];
        if (hop[t] <= k + 1) continue;
        const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
        if (dx * dx + dy * dy + dz * dz < rsq_max) {
          hop[t] = k + 1;
          next_frontier.push_back(t);
        }
      }
    }
    frontier.swap(next_frontier);
  }

  // renumbering: new index of every kept node (-1: dropped or folded), and back
  new_index.assign(nall, -1);
  kept.clear();
  for (int i = 0; i < nall; i++)
    if (fold[i] == i && hop[i] <= num_layers) {
      new_index[i] = (int) kept.size();
      kept.push_back(i);
    }
}

/* ----------------------------------------------------------------------
   the edges i->j (model numbering, in edge_src/edge_dst, shifts in
   edge_shift) with |x_j - x_i| < r_max and centre i a node within L-1
   hops of an owned atom; the target is node fold[j] with shift
   x_j - x_fold[j] (exactly zero when j is a node itself), so that the
   model's pos[dst] - pos[src] + shift is x_j - x_i. Folded images are no
   centres: their edges are their owner's. Needs select_receptive_field().
------------------------------------------------------------------------- */

void PairForcefield::build_edges()
{
  double **x = atom->x;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const int ntotal = list->inum + list->gnum;
  const double rsq_max = r_max * r_max;

  edge_src.clear();
  edge_dst.clear();
  edge_shift.clear();
  for (int ii = 0; ii < ntotal; ii++) {
    const int i = ilist[ii];
    if (fold[i] != i || hop[i] >= num_layers) continue;
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    const int64_t ni = new_index[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz < rsq_max) {
        const int t = fold[j];
        edge_src.push_back(ni);
        edge_dst.push_back(new_index[t]);    // node t is within L hops, so kept
        edge_shift.push_back(x[j][0] - x[t][0]);
        edge_shift.push_back(x[j][1] - x[t][1]);
        edge_shift.push_back(x[j][2] - x[t][2]);
      }
    }
  }
}

/* ----------------------------------------------------------------------
   the model inputs on the model's device: positions (model dtype) and
   species of the kept nodes, edge_index and shifts from build_edges()
------------------------------------------------------------------------- */

void PairForcefield::pack_inputs(int nlocal, ForcefieldModelCall &call)
{
  double **x = atom->x;
  const int *type = atom->type;
  const int nkept = (int) kept.size();
  const int64_t nedges = (int64_t) edge_src.size();

  species_buf.resize(nkept);
  for (int k = 0; k < nkept; k++) species_buf[k] = type2species[type[kept[k]]];
  if (ts->staged) {
    pack_inputs_staged(nlocal, call);
    return;
  }

  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor pos;
  if (ts->dtype == torch::kFloat64) {
    pos_d.resize(3 * (size_t) nkept);
    for (int k = 0; k < nkept; k++)
      for (int d = 0; d < 3; d++) pos_d[3 * k + d] = x[kept[k]][d];
    pos = torch::from_blob(pos_d.data(), {nkept, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  } else {
    // float32: positions relative to the first owned atom (the model is
    // translation invariant), so edge vectors keep float32 precision even
    // far from the origin of a large box
    const double o[3] = {x[0][0], x[0][1], x[0][2]};
    pos_f.resize(3 * (size_t) nkept);
    for (int k = 0; k < nkept; k++)
      for (int d = 0; d < 3; d++) pos_f[3 * k + d] = (float) (x[kept[k]][d] - o[d]);
    pos = torch::from_blob(pos_f.data(), {nkept, 3}, torch::TensorOptions().dtype(torch::kFloat32));
  }
  // copies: the model must not see (or keep) pointers into our buffers
  call.pos = pos.to(ts->device, /*non_blocking=*/false, /*copy=*/true);
  call.species = torch::from_blob(species_buf.data(), {nkept}, i64).to(ts->device, false, true);
  torch::Tensor edge_index = torch::empty({2, nedges}, i64);
  if (nedges > 0) {
    std::memcpy(edge_index.data_ptr<int64_t>(), edge_src.data(), nedges * sizeof(int64_t));
    std::memcpy(edge_index.data_ptr<int64_t>() + nedges, edge_dst.data(), nedges * sizeof(int64_t));
  }
  call.edge_index = edge_index.to(ts->device);
  if (nedges > 0)
    call.shifts = torch::from_blob(edge_shift.data(), {nedges, 3}, torch::TensorOptions().dtype(torch::kFloat64))
                      .to(ts->device, ts->dtype, /*non_blocking=*/false, /*copy=*/true);
  else
    call.shifts = torch::zeros({0, 3}, torch::TensorOptions().dtype(ts->dtype).device(ts->device));
  call.nlocal = nlocal;
}

/* ----------------------------------------------------------------------
   the device path of pack_inputs (ts->staged): edge_index [2,E] int64,
   pos [N,3] and shifts [E,3] (model dtype) written into one host staging
   buffer (pinned memory on CUDA) and sent in one copy into a device buffer
   (both kept between steps); the model gets views of it. Same values as the
   CPU path: positions as there, shifts rounded from double to the model
   dtype on the host instead of by .to(). The species tensor is rebuilt only
   when the kept nodes' species change (on one rank with folding: never
   between reneighbourings, usually never at all).
   The staging buffer is rewritten next step only after this step's outputs
   came back (a synchronous copy), i.e. after the copy out of it finished.
------------------------------------------------------------------------- */

void PairForcefield::pack_inputs_staged(int nlocal, ForcefieldModelCall &call)
{
  double **x = atom->x;
  const int nkept = (int) kept.size();
  const int64_t nedges = (int64_t) edge_src.size();
  const bool f64 = ts->dtype == torch::kFloat64;
  const size_t real = f64 ? sizeof(double) : sizeof(float);
  const bool cuda = ts->device.is_cuda();

  const size_t off_pos = align8(2 * (size_t) nedges * sizeof(int64_t));
  const size_t off_shift = align8(off_pos + 3 * (size_t) nkept * real);
  const size_t bytes = align8(off_shift + 3 * (size_t) nedges * real);
  auto u8 = torch::TensorOptions().dtype(torch::kUInt8);
  reserve_bytes(ts->host_in, bytes, cuda ? u8.pinned_memory(true) : u8);
  reserve_bytes(ts->dev_in, bytes, u8.device(ts->device));

  uint8_t *h = ts->host_in.data_ptr<uint8_t>();
  if (nedges > 0) {
    std::memcpy(h, edge_src.data(), nedges * sizeof(int64_t));
    std::memcpy(h + nedges * sizeof(int64_t), edge_dst.data(), nedges * sizeof(int64_t));
  }
  if (f64) {
    double *pos = reinterpret_cast<double *>(h + off_pos);
    for (int k = 0; k < nkept; k++)
      for (int d = 0; d < 3; d++) pos[3 * k + d] = x[kept[k]][d];
    std::memcpy(h + off_shift, edge_shift.data(), 3 * nedges * sizeof(double));
  } else {
    // as the CPU path: float32 positions relative to the first owned atom
    const double o[3] = {x[0][0], x[0][1], x[0][2]};
    float *pos = reinterpret_cast<float *>(h + off_pos);
    for (int k = 0; k < nkept; k++)
      for (int d = 0; d < 3; d++) pos[3 * k + d] = (float) (x[kept[k]][d] - o[d]);
    float *sh = reinterpret_cast<float *>(h + off_shift);
    for (int64_t e = 0; e < 3 * nedges; e++) sh[e] = (float) edge_shift[e];
  }
  torch::Tensor dev = ts->dev_in.narrow(0, 0, (int64_t) bytes);
  dev.copy_(ts->host_in.narrow(0, 0, (int64_t) bytes), /*non_blocking=*/cuda);

  call.edge_index = dev.narrow(0, 0, 2 * nedges * (int64_t) sizeof(int64_t)).view(torch::kInt64).view({2, nedges});
  call.pos = dev.narrow(0, (int64_t) off_pos, 3 * (int64_t) nkept * (int64_t) real).view(ts->dtype).view({nkept, 3});
  call.shifts =
      dev.narrow(0, (int64_t) off_shift, 3 * nedges * (int64_t) real).view(ts->dtype).view({nedges, 3});

  if (!ts->species_dev.defined() || ts->species_prev != species_buf) {
    ts->species_prev = species_buf;
    ts->species_dev = torch::from_blob(ts->species_prev.data(), {nkept}, torch::TensorOptions().dtype(torch::kInt64))
                          .to(ts->device, /*non_blocking=*/false, /*copy=*/true);
    ts->species_uploads++;
  }
  call.species = ts->species_dev;
  call.nlocal = nlocal;
}

/* ----------------------------------------------------------------------
   debugging / benchmarking: FORCEFIELD_DUMP_INPUTS=file saves the model
   inputs of the first evaluation (torch.load(file) -> (pos, species,
   edge_index, shifts, n_local)); ranks other than 0 write file.rank<N>
------------------------------------------------------------------------- */

void PairForcefield::dump_inputs_once(const ForcefieldModelCall &call)
{
  if (inputs_dumped) return;
  inputs_dumped = true;
  const char *dump = std::getenv("FORCEFIELD_DUMP_INPUTS");
  if (!dump || !*dump) return;

  std::string fname = dump;
  if (comm->me > 0) fname += ".rank" + std::to_string(comm->me);
  // a copy of exactly the tensor (the device path's inputs are views of one buffer)
  auto cpu = [](const torch::Tensor &t) { return t.to(torch::kCPU).clone(); };
  auto tuple = c10::ivalue::Tuple::create(
      {cpu(call.pos), cpu(call.species), cpu(call.edge_index), cpu(call.shifts), c10::IValue(call.nlocal)});
  std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(tuple));
  std::ofstream out(fname, std::ios::binary);
  out.write(bytes.data(), (std::streamsize) bytes.size());
  if (!out.good())
    error->one(FLERR, "pair_style forcefield: cannot write FORCEFIELD_DUMP_INPUTS file '{}'", fname);
}

/* ----------------------------------------------------------------------
   call the model's forward() and keep its four output tensors
------------------------------------------------------------------------- */

void PairForcefield::run_model(ForcefieldModelCall &call)
{
  std::vector<torch::jit::IValue> inputs;
  inputs.emplace_back(call.pos);
  inputs.emplace_back(call.species);
  inputs.emplace_back(call.edge_index);
  inputs.emplace_back(call.shifts);
  inputs.emplace_back(call.nlocal);

  // the model differentiates its energy inside forward(): make sure autograd
  // is on even if LAMMPS is driven from Python under torch.no_grad()
  torch::AutoGradMode enable_grad(true);
  // TorchScript's profiling executor re-optimises the graph after two calls; on this
  // model that gains no speed and its optimised graph keeps ~3x the memory alive
  // (8k atoms: 1.6 GB instead of 0.55 GB; bench/README.md), so run it unoptimised
  torch::jit::GraphOptimizerEnabledGuard no_graph_optimizer(false);
  c10::IValue result;
  std::string failure;
  bool failed = false;
  try {
    result = ts->model.forward(inputs);
  } catch (const std::exception &e) {
    failure = first_line(e.what());
    failed = true;
  }
  if (failed) error->one(FLERR, "pair_style forcefield: model evaluation failed: {}", failure);
  if (!result.isTuple() || result.toTupleRef().elements().size() != 4)
    error->one(FLERR, "pair_style forcefield: the model must return a tuple of 4 tensors "
                      "(energy, node_energy, forces, virial)");
  const auto &outs = result.toTupleRef().elements();
  call.energy = outs[0].toTensor();
  call.node_energy = outs[1].toTensor();
  call.forces = outs[2].toTensor();
  call.virial = outs[3].toTensor();
}

/* ----------------------------------------------------------------------
   the model's outputs into LAMMPS (as double on the host): forces on every
   kept node (ghost nodes too: reverse communication sums them onto their
   owners; folded images get none, the model already put their share on
   the owner through the shifts), energy, per-atom energy of the owned
   atoms, global virial
------------------------------------------------------------------------- */

void PairForcefield::scatter_outputs(const ForcefieldModelCall &call)
{
  double **f = atom->f;
  const int nkept = (int) kept.size();
  const int nlocal = (int) call.nlocal;
  auto cpu64 = torch::TensorOptions().dtype(torch::kFloat64).device(torch::kCPU);

  if (ts->staged) {
    scatter_outputs_staged(call);
    return;
  }
  torch::Tensor forces = call.forces.detach().to(cpu64).contiguous();
  if (forces.dim() != 2 || forces.size(0) != nkept || forces.size(1) != 3)
    error->one(FLERR, "pair_style forcefield: model returned forces of wrong shape (expected [{}, 3])", nkept);
  const double *fm = forces.data_ptr<double>();
  for (int k = 0; k < nkept; k++) {
    const int i = kept[k];
    f[i][0] += fm[3 * k + 0];
    f[i][1] += fm[3 * k + 1];
    f[i][2] += fm[3 * k + 2];
  }

  if (eflag_global) eng_vdwl += call.energy.detach().to(cpu64).item<double>();

  if (eflag_atom) {
    torch::Tensor node_energy = call.node_energy.detach().to(cpu64).contiguous();
    if (node_energy.dim() != 1 || node_energy.size(0) != nkept)
      error->one(FLERR, "pair_style forcefield: model returned node_energy of wrong shape");
    const double *em = node_energy.data_ptr<double>();
    for (int i = 0; i < nlocal; i++) eatom[i] += em[i];
  }

  if (vflag_global) {
    torch::Tensor virial_t = call.virial.detach().to(cpu64).contiguous();
    if (virial_t.numel() != 6)
      error->one(FLERR, "pair_style forcefield: model returned a virial with {} entries, expected 6",
                 virial_t.numel());
    const double *vm = virial_t.data_ptr<double>();
    for (int k = 0; k < 6; k++) virial[k] += vm[k];
  }
}

/* ----------------------------------------------------------------------
   the device path of scatter_outputs (ts->staged): the shapes checked (no
   synchronisation), forces, virial, energy (and per-atom energies when
   asked for) converted to double and joined on the device, then ONE copy to
   the host (the step's only synchronisation outside the model). The same
   double values as the CPU path (float -> double is exact).
------------------------------------------------------------------------- */

void PairForcefield::scatter_outputs_staged(const ForcefieldModelCall &call)
{
  double **f = atom->f;
  const int nkept = (int) kept.size();
  const int nlocal = (int) call.nlocal;
  const torch::Tensor &forces = call.forces;
  if (forces.dim() != 2 || forces.size(0) != nkept || forces.size(1) != 3)
    error->one(FLERR, "pair_style forcefield: model returned forces of wrong shape (expected [{}, 3])", nkept);
  if (call.virial.numel() != 6)
    error->one(FLERR, "pair_style forcefield: model returned a virial with {} entries, expected 6",
               call.virial.numel());
  if (call.energy.numel() != 1)
    error->one(FLERR, "pair_style forcefield: model returned an energy with {} entries, expected 1",
               call.energy.numel());
  if (eflag_atom && (call.node_energy.dim() != 1 || call.node_energy.size(0) != nkept))
    error->one(FLERR, "pair_style forcefield: model returned node_energy of wrong shape");

  std::vector<torch::Tensor> parts = {forces.detach().reshape({-1}), call.virial.detach().reshape({-1}),
                                      call.energy.detach().reshape({-1})};
  if (eflag_atom) parts.push_back(call.node_energy.detach().reshape({-1}));
  for (auto &t : parts) t = t.to(torch::kFloat64);
  torch::Tensor joined = torch::cat(parts);
  const int64_t n = joined.numel();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  if (!ts->host_out.defined() || ts->host_out.numel() < n)
    ts->host_out = torch::empty({std::max<int64_t>(n, ts->host_out.defined() ? ts->host_out.numel() * 3 / 2 : 0)},
                                ts->device.is_cuda() ? f64.pinned_memory(true) : f64);
  ts->host_out.narrow(0, 0, n).copy_(joined, /*non_blocking=*/false);
  const double *out = ts->host_out.data_ptr<double>();

  for (int k = 0; k < nkept; k++) {
    const int i = kept[k];
    f[i][0] += out[3 * k + 0];
    f[i][1] += out[3 * k + 1];
    f[i][2] += out[3 * k + 2];
  }
  const double *vm = out + 3 * (int64_t) nkept;
  if (eflag_global) eng_vdwl += vm[6];
  if (eflag_atom) {
    const double *em = vm + 7;
    for (int i = 0; i < nlocal; i++) eatom[i] += em[i];
  }
  if (vflag_global)
    for (int k = 0; k < 6; k++) virial[k] += vm[k];
}

/* ----------------------------------------------------------------------
   FORCEFIELD_TIMING=1: at the end of each run, the time spent in the model's
   forward() and in the rest of compute() (selection, edges, conversions,
   force scatter), summed over the run (rank 0)
------------------------------------------------------------------------- */

void PairForcefield::finish()
{
  if (!timing || ncalls == 0) return;
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style forcefield timing: {} evaluations, model {:.6f} s, pair style outside "
                   "the model {:.6f} s ({:.2f}%)\n",
                   ncalls, time_model, time_outside, time_model > 0 ? 100.0 * time_outside / time_model : 0.0);
  if (ts->staged && comm->me == 0)
    utils::logmesg(lmp, "pair_style forcefield timing: species uploaded to the device {} time(s) so far\n",
                   ts->species_uploads);
  time_model = time_outside = 0.0;
  ncalls = 0;
}
