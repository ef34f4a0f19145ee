// fastblocks._C.MBConvRunner / ConvEvalRunner (added to the module by bindings.cpp): one patched
// block's whole-block eval call, or one folded conv's, with its checks in C++.
//
// The Python whole-block path (fastblocks/inference/blocks.py) checks, every call, that the
// block's source tensors are the ones its cached mbconv_eval arguments were folded from (the
// modules' parameter / buffer slots, their version counters and storages, the BatchNorms' eps),
// that no gradient is needed and that x is a channels_last float32 CPU map, then calls the op
// through the dispatcher: ~10 us of Python and argument parsing a block, a tenth of a batch-1
// mobilenetv2 forward. The runner holds the same arguments and does the same checks in C++; a call
// returns None wherever the Python path must decide (then it rebuilds the arguments and the
// runner, or runs the module's own forward).
#include <torch/extension.h>

#include <string>
#include <vector>

#include "eval_cpu_ops.h"

namespace fastblocks {
namespace {

namespace py = pybind11;

std::optional<at::Tensor> optional_tensor(const py::handle& h) {
  if (h.is_none()) return std::nullopt;
  return h.cast<at::Tensor>();
}

// The source tensors cached eval arguments were built from, checked in C++ on every call: every
// slot (a module's parameter / buffer dict entry) holds the object it held at construction, each
// source tensor keeps its version and storage, each BatchNorm its eps, and each module of
// `modules` is in eval mode.
class SourceGuard {
 public:
  SourceGuard(const py::tuple& slots, const py::tuple& batchnorms, const py::tuple& modules) {
    for (const auto& slot : slots) {
      const auto pair = slot.cast<py::tuple>();
      TORCH_CHECK(pair.size() == 2 && PyDict_Check(pair[0].ptr()), "fastblocks runner: slots must be (dict, name) pairs");
      PyObject* value = PyDict_GetItemWithError(pair[0].ptr(), pair[1].ptr());
      if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
      slots_.push_back({py::reinterpret_borrow<py::object>(pair[0]), py::reinterpret_borrow<py::object>(pair[1]),
                        py::reinterpret_borrow<py::object>(value == nullptr ? Py_None : value)});
      if (value != nullptr && value != Py_None) {
        const at::Tensor t = py::handle(value).cast<at::Tensor>();
        sources_.push_back({t, t._version(), t.has_storage() ? t.data_ptr() : nullptr});
      }
    }
    for (const auto& bn : batchnorms) eps_.push_back({py::reinterpret_borrow<py::object>(bn), bn.attr("eps")});
    for (const auto& m : modules) modules_.push_back(py::reinterpret_borrow<py::object>(m));
  }

  bool current() const {
    for (const auto& m : modules_) {
      const int training = PyObject_IsTrue(m.attr("training").ptr());
      if (training < 0) throw py::error_already_set();
      if (training) return false;
    }
    for (const auto& s : slots_) {
      PyObject* now = PyDict_GetItemWithError(s.dict.ptr(), s.name.ptr());
      if (now == nullptr && PyErr_Occurred()) throw py::error_already_set();
      if ((now == nullptr ? Py_None : now) != s.value.ptr()) return false;
    }
    for (const auto& s : sources_)
      if (s.tensor._version() != s.version || (s.tensor.has_storage() ? s.tensor.data_ptr() : nullptr) != s.data)
        return false;
    for (const auto& e : eps_) {
      const int equal = PyObject_RichCompareBool(e.module.attr("eps").ptr(), e.value.ptr(), Py_EQ);
      if (equal < 0) throw py::error_already_set();
      if (!equal) return false;
    }
    return true;
  }

  // Whether autograd would need a gradient through the call (then the Python path decides).
  bool grad_needed(const at::Tensor& x) const {
    if (!at::GradMode::is_enabled()) return false;
    if (x.requires_grad()) return true;
    for (const auto& s : sources_)
      if (s.tensor.requires_grad()) return true;
    return false;
  }

 private:
  struct Slot {
    py::object dict, name, value;
  };
  struct Source {
    at::Tensor tensor;
    uint32_t version;
    const void* data;
  };
  struct Eps {
    py::object module, value;
  };
  std::vector<Slot> slots_;
  std::vector<Source> sources_;
  std::vector<Eps> eps_;
  std::vector<py::object> modules_;
};

bool float_cpu_4d(const at::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4;
}

class MBConvRunner {
 public:
  // args: mbconv_eval's arguments after x, in its order. slots: (dict, name) pairs of every source
  // tensor slot, read now (a slot holding None must stay None). batchnorms: modules whose `eps`
  // entered the folding. (The caller checks the block's modules' training flags and hooks.)
  MBConvRunner(const py::tuple& args, const py::tuple& slots, const py::tuple& batchnorms)
      : guard_(slots, batchnorms, py::tuple()) {
    TORCH_CHECK(args.size() == 19, "MBConvRunner: expected mbconv_eval's 19 arguments after x, got ", args.size());
    expand_wt_ = optional_tensor(args[0]);
    expand_bias_ = optional_tensor(args[1]);
    expand_act_ = args[2].cast<std::string>();
    dw_taps_ = args[3].cast<at::Tensor>();
    dw_bias_ = args[4].cast<at::Tensor>();
    kernel_size_ = args[5].cast<int64_t>();
    stride_ = args[6].cast<int64_t>();
    padding_ = args[7].cast<std::vector<int64_t>>();
    dw_act_ = args[8].cast<std::string>();
    se_w1_ = optional_tensor(args[9]);
    se_b1_ = optional_tensor(args[10]);
    se_w2_ = optional_tensor(args[11]);
    se_b2_ = optional_tensor(args[12]);
    se_act_ = args[13].cast<std::string>();
    se_gate_ = args[14].cast<std::string>();
    gate_act_ = args[15].cast<std::string>();
    proj_wt_ = args[16].cast<at::Tensor>();
    proj_bias_ = args[17].cast<at::Tensor>();
    residual_ = args[18].cast<bool>();
  }

  // The block's output, or None: a source changed since the arguments were built, a gradient is
  // needed, or x is not a 4-D channels_last float32 CPU tensor.
  py::object call(const at::Tensor& x) const {
    if (!(float_cpu_4d(x) && x.is_contiguous(at::MemoryFormat::ChannelsLast)) || !guard_.current() ||
        guard_.grad_needed(x))
      return py::none();
    RECORD_FUNCTION("fastblocks_kernels::mbconv_eval", std::vector<c10::IValue>({x}));
    at::Tensor y;
    {
      py::gil_scoped_release no_gil;
      y = cpu::mbconv_eval(x, expand_wt_, expand_bias_, expand_act_, dw_taps_, dw_bias_, kernel_size_, stride_,
                           padding_, dw_act_, se_w1_, se_b1_, se_w2_, se_b2_, se_act_, se_gate_, gate_act_, proj_wt_,
                           proj_bias_, residual_);
    }
    return py::cast(y);
  }

 private:
  SourceGuard guard_;
  std::optional<at::Tensor> expand_wt_, expand_bias_, se_w1_, se_b1_, se_w2_, se_b2_;
  at::Tensor dw_taps_, dw_bias_, proj_wt_, proj_bias_;
  std::string expand_act_, dw_act_, se_act_, se_gate_, gate_act_;
  int64_t kernel_size_ = 0, stride_ = 0;
  std::vector<int64_t> padding_;
  bool residual_ = false;
};

// A folded conv (+ BN + act) on fastblocks' eval kernels: "pointwise" (args: panels, bias, act;
// channels_last x, or any 1x1 map) or "direct" (args: taps, bias, kernel_size, stride, padding,
// act; x in any layout). modules: the conv and its BatchNorm, whose training flags the call checks.
class ConvEvalRunner {
 public:
  ConvEvalRunner(const std::string& kind, const py::tuple& args, const py::tuple& slots, const py::tuple& batchnorms,
                 const py::tuple& modules)
      : guard_(slots, batchnorms, modules), direct_(kind == "direct") {
    TORCH_CHECK(kind == "pointwise" || kind == "direct", "ConvEvalRunner: kind must be 'pointwise' or 'direct', got ",
                kind);
    TORCH_CHECK(args.size() == (direct_ ? 6u : 3u), "ConvEvalRunner: expected ", direct_ ? 6 : 3,
                " arguments for '", kind, "', got ", args.size());
    weight_ = args[0].cast<at::Tensor>();
    bias_ = args[1].cast<at::Tensor>();
    if (direct_) {
      kernel_size_ = args[2].cast<int64_t>();
      stride_ = args[3].cast<int64_t>();
      padding_ = args[4].cast<std::vector<int64_t>>();
    }
    act_ = args[direct_ ? 5 : 2].cast<std::string>();
  }

  bool current() const { return guard_.current(); }

  // act(conv(x)), or None where the Python path must decide (x's dtype, device or layout, a source
  // changed, a module in training mode, a gradient needed).
  py::object call(const at::Tensor& x) const {
    if (!float_cpu_4d(x)) return py::none();
    if (!direct_) {  // the layouts ConvRunner sends to pointwise_eval
      const bool one_pixel = x.size(2) * x.size(3) == 1;
      if (!(one_pixel || (x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()))) return py::none();
    }
    if (!guard_.current() || guard_.grad_needed(x)) return py::none();
    RECORD_FUNCTION(direct_ ? "fastblocks_kernels::direct_conv_eval" : "fastblocks_kernels::pointwise_eval",
                    std::vector<c10::IValue>({x}));
    at::Tensor y;
    {
      py::gil_scoped_release no_gil;
      y = direct_ ? cpu::direct_conv_eval(x, weight_, bias_, kernel_size_, stride_, padding_, act_)
                  : cpu::pointwise_eval(x, weight_, bias_, std::nullopt, act_, std::nullopt);
    }
    return py::cast(y);
  }

 private:
  SourceGuard guard_;
  bool direct_;
  at::Tensor weight_, bias_;
  int64_t kernel_size_ = 0, stride_ = 0;
  std::vector<int64_t> padding_;
  std::string act_;
};

}  // namespace

void add_block_runner(PyObject* module) {
  auto m = py::reinterpret_borrow<py::module_>(module);
  py::class_<MBConvRunner>(m, "MBConvRunner",
                           "One patched block's whole-block eval call (fastblocks_kernels::mbconv_eval) with the "
                           "checks of its cached arguments in C++; calling it returns the output or None.")
      .def(py::init<const py::tuple&, const py::tuple&, const py::tuple&>(), py::arg("args"), py::arg("slots"),
           py::arg("batchnorms"))
      .def("__call__", &MBConvRunner::call, py::arg("x"));
  py::class_<ConvEvalRunner>(m, "ConvEvalRunner",
                             "A folded conv's eval call (pointwise_eval or direct_conv_eval) with the checks of its "
                             "cached weights in C++; calling it returns the output or None.")
      .def(py::init<const std::string&, const py::tuple&, const py::tuple&, const py::tuple&, const py::tuple&>(),
           py::arg("kind"), py::arg("args"), py::arg("slots"), py::arg("batchnorms"), py::arg("modules"))
      .def("__call__", &ConvEvalRunner::call, py::arg("x"))
      .def("current", &ConvEvalRunner::current,
           "Whether the sources are unchanged and the modules in eval mode (what a call checks before x).");
}

}  // namespace fastblocks
