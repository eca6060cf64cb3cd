# csynth.tcl -- Vitis HLS C synthesis of the inf2 attention kernel. Run by `make -C hls csynth`
# from hls/build (paths below are relative to it). Untested here: no Vitis installed.
# Target: the SmartSSD's Kintex UltraScale+ KU15P at the HILOS design clock of 296 MHz.
open_project -reset inf2_attention_prj
set_top inf2_attention
add_files ../src/inf2_attention.cpp -cflags "-I../include -std=c++14"
add_files -tb ../tb/tb_attention.cpp -cflags "-I../include -std=c++14"
open_solution -reset sol_296mhz -flow_target vitis
set_part xcku15p-ffva1156-2LV-e
create_clock -period 296MHz -name default
config_interface -m_axi_max_widen_bitwidth 512
# C simulation with Vitis needs golden vectors first: `make -C hls golden`, then uncomment.
# csim_design -argv "../build/golden"
csynth_design
exit
